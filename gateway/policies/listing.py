"""Filtering model listings (/api/tags, /api/ps, /v1/models) down to what a key may use.

A listing that needs no filtering goes out as upstream's bytes, never parsed: a key with no model
globs where cloud models are allowed takes no filter at all, and one where they are not gets
upstream's bytes whenever the listing cannot name a cloud model. Otherwise the listing is parsed
once (``listjson``) and only the kept entries are written; one from which nothing is removed is
still upstream's bytes. UIs poll listings, so the same bytes come back again and again: what each
set of globs keeps of them is remembered (``ListingMemo``), and an unchanged listing costs one
comparison of bytes.

It knows listings by their shape, not which server or how many answered.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.errors import UpstreamBroken
from gateway.fleet.listings import Answer
from gateway.ollama import listjson
from gateway.ollama.models import ModelPattern, listed_model, matcher
from gateway.proxy.upstream import UpstreamResponse, read_whole

# Who sees what: a key's globs, and whether cloud models may be listed.
Sight = tuple[tuple[ModelPattern, ...], bool]

# At 1,000 models an /api/tags answer is ~340 KB: a few listings, each filtered for many keys.
_MEMO_BYTES = 16 * 1024 * 1024
_MEMO_LISTINGS = 8
# What remembering one sight's answer holds besides its bytes (the key, the dict slot): counted,
# so that many keys with globs of their own are bounded by the budget too.
_SIGHT_BYTES = 256


class ListingFilter:
    """The listing one key may see: read whole, then answered with its entries removed and its
    exact length (a ``Rewrite``); anything that is not a listing (an error body, say) is passed on
    unchanged. A HEAD answer has no body to read: there it is a body transform, so that the
    length of the whole listing is not given away.
    """

    def __init__(self, memo: ListingMemo, patterns: tuple[ModelPattern, ...], *, allow_cloud: bool) -> None:
        self._memo = memo
        self._sight: Sight = (patterns, allow_cloud)

    async def answer(self, response: UpstreamResponse) -> UpstreamResponse:
        raw = await read_whole(response, listjson.LIMIT + 1)
        if len(raw) > listjson.LIMIT:
            raise UpstreamBroken(f"upstream listing is larger than {listjson.LIMIT // (1024 * 1024)} MiB")
        return Answer(response.status, self._memo.filtered(raw, self._sight), response.headers)

    def feed(self, data: bytes) -> bytes:
        return b""

    def end(self) -> bytes:
        return b""


def filtered(raw: bytes, sight: Sight) -> bytes:
    """``raw`` with the entries ``sight`` may not see removed; ``raw`` itself when none is."""
    patterns, allow_cloud = sight
    if not patterns and not _may_name_cloud(raw):
        return raw
    try:
        listing = listjson.read(raw)
    except (ValueError, RecursionError):
        return raw
    if not isinstance(listing, dict) or (found := listjson.entries(listing)) is None:
        return raw
    field_name, name_key, entries = found
    match = matcher(patterns) if patterns else None
    kept = []
    for entry in entries:
        text = listjson.entry_name(entry, name_key)
        model = listed_model(text) if text is not None else None
        if model is None or (model.is_cloud and not allow_cloud):
            continue
        if match is None or match(str(model)) is not None:
            kept.append(entry)
    if len(kept) == len(entries):
        return raw
    listing[field_name] = kept
    written = listjson.write(listing)
    return written + b"\n" if raw.endswith(b"\n") else written


def _may_name_cloud(raw: bytes) -> bool:
    """Could a name in ``raw`` be a cloud model's (``:cloud``, ``-cloud``, in any case)?

    Every such name holds "cloud" once lower-cased, and a JSON string spells it out unless it is
    escaped: ~0.3 ms at 1,000 models, against ~2 for parsing.
    """
    return raw.find(b"\\") >= 0 or raw.lower().find(b"cloud") >= 0


@dataclass(eq=False, slots=True)
class _Seen:
    raw: bytes
    kept: dict[Sight, bytes] = field(default_factory=dict)
    size: int = 0  # bytes held: the listing, and every filtered copy that is not the listing itself


class ListingMemo:
    """What each sight keeps of the listings seen lately, found by their bytes.

    A listing is looked up by comparing bytes (~0.04 ms at 1,000 models; hashing them would cost
    ~0.2 ms), the most recent first; a changed listing is new bytes, filtered afresh. It holds at
    most ``listings`` listings and ``budget`` bytes, the least recently used dropped first.
    """

    def __init__(self, *, budget: int = _MEMO_BYTES, listings: int = _MEMO_LISTINGS) -> None:
        self._budget = budget
        self._listings = listings
        self._recent: list[_Seen] = []  # the most recently used first
        self._held = 0

    def filtered(self, raw: bytes, sight: Sight) -> bytes:
        seen = self._find(raw)
        answer = seen.kept.get(sight)
        if answer is None:
            answer = seen.kept[sight] = filtered(seen.raw, sight)
            size = _SIGHT_BYTES + (len(answer) if answer is not seen.raw else 0)
            seen.size += size
            self._held += size
            self._trim()
        return answer

    def _find(self, raw: bytes) -> _Seen:
        recent = self._recent
        for index, seen in enumerate(recent):
            if len(seen.raw) == len(raw) and seen.raw == raw:
                if index:
                    recent.insert(0, recent.pop(index))
                return seen
        seen = _Seen(raw, size=len(raw))
        recent.insert(0, seen)
        self._held += seen.size
        return seen

    def _trim(self) -> None:
        # The listing just used stays, whatever its size: it is the one being answered.
        recent = self._recent
        while len(recent) > 1 and (len(recent) > self._listings or self._held > self._budget):
            self._held -= recent.pop().size
