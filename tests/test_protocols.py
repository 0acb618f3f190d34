"""The model contracts (rag.models.protocols): every local and remote model class keeps them.

Local models are built on the tiny checkpoint; remote ones talk to the vLLM-shaped server of test_remote.py (on the
same tiny models). Besides ``isinstance`` (which only sees that members exist), each method's signature is compared
with the protocol's: same parameter names, order, kinds and defaults, so a caller typed against the protocol can
call any implementation the same way, positionally or by keyword.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_remote import ModelServer

from rag.models.protocols import EmbeddingModel, GenerationModel, RerankingModel

#: protocol -> the methods the callers use
METHODS: dict[type, tuple[str, ...]] = {
    EmbeddingModel: ("embed",),
    RerankingModel: ("score",),
    GenerationModel: ("count_tokens", "generate", "stream"),
}


def check_signature(proto: Callable[..., Any], impl: Callable[..., Any], *, own_defaults: tuple[str, ...] = ()) -> None:
    """``impl`` accepts every call ``proto`` allows, with the same defaults (extra parameters need defaults), except
    for the parameters in ``own_defaults``, which must only have one."""
    want = list(inspect.signature(proto).parameters.values())[1:]  # without self
    have = list(inspect.signature(impl).parameters.values())[1:]
    where = f"{impl.__qualname__}{inspect.signature(impl)}"
    assert [p.name for p in have[:len(want)]] == [p.name for p in want], where
    for w, h in zip(want, have, strict=False):
        assert h.kind == w.kind, f"{where}: {h.name} is {h.kind}, the protocol says {w.kind}"
        if h.name in own_defaults:
            assert h.default is not inspect.Parameter.empty, f"{where}: {h.name} has no default"
            continue
        assert h.default == w.default, f"{where}: {h.name} defaults to {h.default!r}, the protocol says {w.default!r}"
        assert str(h.annotation) == str(w.annotation), f"{where}: {h.name}: {h.annotation} vs {w.annotation}"
    assert str(inspect.signature(impl).return_annotation) == str(inspect.signature(proto).return_annotation), where
    for extra in have[len(want):]:
        assert extra.default is not inspect.Parameter.empty or extra.kind in (
            inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL), f"{where}: {extra.name} has no default"


def typed_embedder(m: EmbeddingModel) -> EmbeddingModel:  # what a type checker sees at the callers
    return m


def typed_reranker(m: RerankingModel) -> RerankingModel:
    return m


def typed_generator(m: GenerationModel) -> GenerationModel:
    return m


@pytest.fixture(scope="module")
def server(embedder, reranker, generator) -> Iterator[ModelServer]:
    with ModelServer(embedder, reranker, generator) as s:
        yield s


@pytest.fixture()
def remote_models(server: ModelServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    """The remote models as the app builds them: from RAGVQA_<ROLE>_BACKEND/_URL, through the factory."""
    from rag.config import Settings
    from rag.models.factory import load_models

    monkeypatch.chdir(tmp_path)  # no stray .env
    for role, backend in (("EMBEDDER", "vllm"), ("RERANKER", "vllm"), ("GENERATOR", "openai")):
        monkeypatch.setenv(f"RAGVQA_{role}_BACKEND", backend)
        monkeypatch.setenv(f"RAGVQA_{role}_URL", server.url)
    m = load_models(Settings(data_dir=tmp_path), "real")
    return {"embedder": m.embedder, "reranker": m.reranker, "generator": m.generator}


def hidden_size(model_dir: Path) -> int:
    """The vector size the checkpoint promises: its text model's hidden size (config.json, not the code)."""
    return int(json.loads((model_dir / "config.json").read_text())["text_config"]["hidden_size"])


def check_all(embedder: Any, reranker: Any, generator: Any, dim: int) -> None:
    for model, proto in ((embedder, EmbeddingModel), (reranker, RerankingModel), (generator, GenerationModel)):
        assert isinstance(model, proto), f"{type(model).__name__} does not satisfy {proto.__name__}"
        assert isinstance(model.name, str) and model.name
        for meth in METHODS[proto]:
            check_signature(getattr(proto, meth), getattr(type(model), meth))
    assert typed_embedder(embedder).dim == dim
    assert typed_reranker(reranker) is reranker and typed_generator(generator) is generator


def test_local_models_keep_the_contracts(embedder, reranker, generator, tiny_model_dir: Path) -> None:
    check_all(embedder, reranker, generator, hidden_size(tiny_model_dir))


def test_remote_models_keep_the_contracts(remote_models: dict[str, Any], embedder, tiny_model_dir: Path) -> None:
    from rag.models.remote import RemoteEmbedder, RemoteGenerator, RemoteReranker

    e, r, g = remote_models["embedder"], remote_models["reranker"], remote_models["generator"]
    assert (type(e), type(r), type(g)) == (RemoteEmbedder, RemoteReranker, RemoteGenerator)
    check_all(e, r, g, hidden_size(tiny_model_dir))
    # called through the contract, positionally as the protocol orders the parameters, they answer like the local one
    got = typed_embedder(e).embed(["pump noise"], None, None, None, False, 64)
    want = embedder.embed(["pump noise"], None, None, None, False, 64)
    assert got.shape == want.shape == (1, hidden_size(tiny_model_dir)) and float(np.max(np.abs(got - want))) <= 1e-5


def test_contracts_reject_what_lacks_a_member(embedder) -> None:
    """The protocols are not vacuous: a class missing a used member fails them."""

    class NoScore:
        name = "x"

    class NoStream:
        name = "x"

        def count_tokens(self, text: str) -> int:
            return len(text)

        def generate(self, messages: Any, **kw: Any) -> str:
            return ""

    assert not isinstance(NoScore(), RerankingModel) and not isinstance(NoStream(), GenerationModel)
    assert not isinstance(embedder, RerankingModel) and not isinstance(embedder, GenerationModel)


# -- typed per-role settings (the RAGVQA_<ROLE>_* environment variables, names unchanged) ---------------------------
def test_role_settings_read_the_per_role_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from pydantic import SecretStr

    from rag.config import ROLES, Settings
    from rag.models.remote.settings import RemoteSettings

    monkeypatch.chdir(tmp_path)  # no stray .env
    env = {
        "EMBEDDER": ("org/emb-x", "vllm", "http://emb:1", "k-emb", "served-emb", "7.5"),
        "RERANKER": ("org/rr-y", "local", None, None, None, None),
        "GENERATOR": ("org/gen-z", "openai", "https://gen:2/v1", "k-gen", None, "99"),
    }
    for role, (model, backend, url, key, served, timeout) in env.items():
        for name, value in (("MODEL", model), ("BACKEND", backend), ("URL", url), ("API_KEY", key),
                            ("SERVED_MODEL", served), ("TIMEOUT", timeout)):
            if value is None:
                monkeypatch.delenv(f"RAGVQA_{role}_{name}", raising=False)
            else:
                monkeypatch.setenv(f"RAGVQA_{role}_{name}", value)
    settings, remote = Settings(), RemoteSettings()
    assert ROLES == ("embedder", "reranker", "generator")
    for role in ROLES:
        model, backend, url, key, served, timeout = env[role.upper()]
        assert settings.role(role).model == model and settings.role(role).role == role
        rs = remote.role(role)
        assert (rs.role, rs.backend, rs.url, rs.served_model) == (role, backend, url, served)
        assert (rs.api_key.get_secret_value() if isinstance(rs.api_key, SecretStr) else rs.api_key) == key
        assert rs.is_local == (backend == "local")
    assert remote.role("embedder").timeout == 7.5 and remote.role("generator").timeout == 99.0
    assert remote.role("reranker").timeout == 60.0  # the documented default (RemoteSettings.reranker_timeout)
    for bad in ("Embedder", "ranker", ""):
        with pytest.raises(ValueError, match="unknown model role"):
            settings.role(bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="unknown model role"):
            remote.role(bad)  # type: ignore[arg-type]


def test_eval_cache_wrapper_keeps_the_embedder_contract(embedder, tmp_path: Path, tiny_model_dir: Path) -> None:
    """The eval's caching wrapper stands in for an embedder in the pipeline and the KB: same contract."""
    from eval.cache import CachedEmbedder, EmbeddingCache

    cached = CachedEmbedder(embedder, EmbeddingCache(tmp_path / "cache.sqlite3"))
    assert isinstance(cached, EmbeddingModel) and cached.name == embedder.name
    assert typed_embedder(cached).dim == hidden_size(tiny_model_dir)
    # the cache keeps the eval's own batch size default (8) when the caller gives none
    check_signature(EmbeddingModel.embed, CachedEmbedder.embed, own_defaults=("batch_size",))
