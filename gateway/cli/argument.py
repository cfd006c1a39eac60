"""Arguments of the CLI's commands: an argparse type from a rule shared with the admin API."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def argument(rule: Callable[[str], T], refusal: type[Exception]) -> Callable[[str], T]:
    """An argparse type from a rule shared with the admin API: the rule's ``refusal`` message
    becomes argparse's error, word for word."""

    def convert(text: str) -> T:
        try:
            return rule(text)
        except refusal as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    convert.__name__ = rule.__name__
    return convert
