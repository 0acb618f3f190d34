"""The error tree: user-facing errors are UserInputError (shown as the user's fault) and keep their old built-in
bases (callers that catch ValueError/KeyError keep working); server-side failures are not UserInputError."""

from __future__ import annotations

import pytest

from rag.errors import RagvqaError, UserInputError, is_user_error


def _user_classes() -> list[tuple[type[BaseException], type[BaseException]]]:
    from eval.compare import CompareError
    from eval.data import EvalDataError
    from knowledge_base.archive import IngestInputError
    from knowledge_base.kb import CaseNotFoundError, CaseRejectedError
    from knowledge_base.media_store import MediaError
    from knowledge_base.pdf import PdfError
    from rag.models.embedder import EmbeddingError
    from rag.models.generator import GenerationError
    from rag.models.reranker import RerankError
    from rag.models.vision import VisionInputError
    from rag.pipeline import QueryError
    from rag.validation import InputRejected
    from ui.auth import AuthError
    from ui.upload import UploadError

    return [(QueryError, ValueError), (UploadError, ValueError), (InputRejected, ValueError), (MediaError, ValueError),
            (IngestInputError, ValueError), (VisionInputError, ValueError), (EmbeddingError, ValueError),
            (RerankError, ValueError), (GenerationError, ValueError), (PdfError, ValueError),
            (CaseNotFoundError, KeyError), (CaseRejectedError, ValueError), (CompareError, ValueError),
            (EvalDataError, ValueError), (AuthError, Exception)]


@pytest.mark.parametrize("cls,old_base", _user_classes(), ids=lambda c: c.__name__)
def test_user_facing_errors_are_user_input_errors_and_keep_their_old_base(cls: type, old_base: type) -> None:
    assert issubclass(cls, UserInputError) and issubclass(cls, RagvqaError)
    assert issubclass(cls, old_base)
    assert isinstance(cls.code, str) and cls.code


def test_server_side_errors_are_not_the_users() -> None:
    from eval.runner import EvalError
    from rag.models.remote.http import RemoteError, RemoteTimeoutError

    for cls in (RemoteError, RemoteTimeoutError, EvalError):
        assert issubclass(cls, RagvqaError) and not issubclass(cls, UserInputError), cls
        assert issubclass(cls, RuntimeError)
    assert not is_user_error(ValueError("deep bug")) and not is_user_error(KeyError("x"))


def test_code_and_params_travel_with_the_error() -> None:
    from knowledge_base.media_store import MediaError
    from rag.validation import InputRejected

    e = MediaError("photo.png", "is 8x8 pixels", code="image_too_small")
    assert e.code == "image_too_small" and dict(e.params) == {"problem": "is 8x8 pixels", "where": "photo.png"}
    assert str(e) == "photo.png: is 8x8 pixels" and is_user_error(e)
    moved = InputRejected("zip_bomb", "ratio 900", "member.bin").at("bulk.zip")
    assert moved.code == "zip_bomb" and moved.params["where"] == "bulk.zip › member.bin"
    plain = UserInputError("no")
    assert plain.code == "bad_input" and dict(plain.params) == {}
    with pytest.raises(TypeError):
        e.params["where"] = "elsewhere"  # read-only
