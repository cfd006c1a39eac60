"""The parse worker's loop: length-framed bodies in, one framed answer out for each, in order."""

from __future__ import annotations

import io
import pickle

from gateway.ollama.bodyfacts import BodyFacts
from gateway.ollama.bodyworker import LENGTH, serve


def _framed(data: bytes) -> bytes:
    return len(data).to_bytes(LENGTH, "big") + data


def test_each_body_gets_its_facts_or_the_reason_it_is_refused() -> None:
    bodies = [b'{"model":"llama3.2","stream":true,"messages":[{"role":"user","content":"hello"}]}', b'{"model":']
    out = io.BytesIO()
    serve(io.BytesIO(b"".join(map(_framed, bodies))), out)
    data, answers = out.getvalue(), []
    while data:
        size = int.from_bytes(data[:LENGTH], "big")
        answers.append(pickle.loads(data[LENGTH : LENGTH + size]))
        data = data[LENGTH + size :]
    assert answers == [("facts", BodyFacts.read(bodies[0])), ("refused", "request body is not valid JSON")]
    facts = answers[0][1]
    assert (facts.string("model"), facts.stream, facts.prompt_tokens) == ("llama3.2", True, 1 + 4 + 1)
