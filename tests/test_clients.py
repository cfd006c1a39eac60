"""The official clients work through the gateway with only the base URL changed."""

from __future__ import annotations

from collections.abc import Iterator

import ollama
import openai
import pytest

from tests.fake_ollama import Behaviour, FakeOllama
from tests.servers import RunningGateway

pytestmark = pytest.mark.timeout(30)

MESSAGES = [{"role": "user", "content": "Why is the sky blue?"}]


@pytest.fixture
def clients(gateway: RunningGateway, fake: FakeOllama) -> Iterator[tuple[ollama.Client, ollama.Client]]:
    fake.behaviour = Behaviour(tokens=4)
    with ollama.Client(host=gateway.url, headers=gateway.auth) as through, ollama.Client(host=fake.url) as direct:
        yield through, direct


def test_ollama_chat_and_generate(clients: tuple[ollama.Client, ollama.Client]) -> None:
    through, direct = clients
    assert through.chat(model="llama3.2", messages=MESSAGES).message.content == (
        direct.chat(model="llama3.2", messages=MESSAGES).message.content
    )
    streamed = [part.message.content or "" for part in through.chat(model="llama3.2", messages=MESSAGES, stream=True)]
    assert "".join(streamed) == direct.chat(model="llama3.2", messages=MESSAGES).message.content
    assert len(streamed) == 5
    generated = through.generate(model="llama3.2", prompt="hi")
    assert generated.response == direct.generate(model="llama3.2", prompt="hi").response
    assert generated.eval_count == 4
    parts = list(through.generate(model="llama3.2", prompt="hi", stream=True))
    assert parts[-1].done is True
    assert "".join(part.response or "" for part in parts) == generated.response


def test_ollama_embed_list_show_ps(clients: tuple[ollama.Client, ollama.Client]) -> None:
    through, direct = clients
    assert through.embed(model="nomic-embed-text", input=["a", "b"]).embeddings == (
        direct.embed(model="nomic-embed-text", input=["a", "b"]).embeddings
    )
    assert [model.model for model in through.list().models] == [model.model for model in direct.list().models]
    assert through.show("llama3.2").details == direct.show("llama3.2").details
    assert through.ps().models == direct.ps().models
    with pytest.raises(ollama.ResponseError) as caught:
        through.chat(model="missing-model", messages=MESSAGES)
    assert caught.value.status_code == 404


def test_ollama_pull_with_progress(clients: tuple[ollama.Client, ollama.Client]) -> None:
    through, _ = clients
    statuses = [progress.status for progress in through.pull("llama3.2", stream=True)]
    assert statuses[0] == "pulling manifest"
    assert statuses[-1] == "success"
    assert through.pull("llama3.2").status == "success"


async def test_ollama_async_client(gateway: RunningGateway, fake: FakeOllama) -> None:
    fake.behaviour = Behaviour(tokens=3)
    client = ollama.AsyncClient(host=gateway.url, headers=gateway.auth)
    reply = await client.chat(model="llama3.2", messages=MESSAGES)
    parts = [part async for part in await client.chat(model="llama3.2", messages=MESSAGES, stream=True)]
    assert "".join(part.message.content or "" for part in parts) == reply.message.content
    assert parts[-1].done is True
    generated = await client.generate(model="llama3.2", prompt="x")
    assert generated.eval_count == 3
    assert len((await client.embed(model="nomic-embed-text", input="x")).embeddings) == 1
    assert len((await client.list()).models) == len(fake.models)
    await client.close()


def test_openai_sdk(gateway: RunningGateway, fake: FakeOllama) -> None:
    fake.behaviour = Behaviour(tokens=3)
    through = openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.key, max_retries=0)
    direct = openai.OpenAI(base_url=fake.url + "/v1", api_key="unused", max_retries=0)
    completion = through.chat.completions.create(model="llama3.2", messages=MESSAGES)  # type: ignore[arg-type]
    expected = direct.chat.completions.create(model="llama3.2", messages=MESSAGES)  # type: ignore[arg-type]
    assert completion.choices[0].message.content == expected.choices[0].message.content
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 3
    stream = through.chat.completions.create(model="llama3.2", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]  # type: ignore[union-attr]
    assert "".join(pieces) == expected.choices[0].message.content
    embeddings = through.embeddings.create(model="nomic-embed-text", input=["a", "b"])
    assert len(embeddings.data) == 2
    assert [model.id for model in through.models.list()] == [model.id for model in direct.models.list()]
    through.close()
    direct.close()
