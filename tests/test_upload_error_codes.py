"""Query-image refusals keep their rule's code and values through the chat upload, so a Chinese user reads them in
Chinese (issue 14 follow-up): the zh text is the catalog's template filled with the values the rule measured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from rag.config import VisionBudget

ZH = json.loads((Path(__file__).resolve().parents[1] / "rag" / "locales" / "zh-CN.json").read_text(encoding="utf-8"))


def _refusal(path: Path, budget: VisionBudget):
    from ui.upload import UploadError, prepare_uploads

    with pytest.raises(UploadError) as e:
        prepare_uploads([str(path)], pdf_page=1, out_dir=path.parent / "out", budget=budget)
    return e.value


@pytest.mark.parametrize("case", ["elongated", "too_small", "too_many_pixels", "unreadable", "video_small"])
def test_image_refusals_keep_code_and_params_and_translate(case: str, tmp_path: Path) -> None:
    from rag.i18n import error_text

    budget = VisionBudget()
    path = tmp_path / "photo.png"
    if case == "elongated":
        Image.new("RGB", (8200, 40), "white").save(path)  # ratio 205 > 200
        code, params = "image_too_elongated", {"name": "photo.png", "width": 8200, "height": 40, "ratio": 205, "limit": 200}
    elif case == "too_small":
        Image.new("RGB", (20, 50), "white").save(path)
        code, params = "image_too_small", {"name": "'photo.png'", "width": 20, "height": 50, "min_side": 32}
    elif case == "too_many_pixels":
        Image.new("RGB", (400, 300), "white").save(path)
        budget = VisionBudget(max_image_pixels=100_000)
        code, params = "image_too_many_pixels", {"name": "photo.png", "width": 400, "height": 300, "pixels": 120_000,
                                                 "limit": 100_000}
    elif case == "video_small":
        from conftest import write_video

        path = write_video(tmp_path / "clip.mp4", n_frames=8, fps=4, size=16)
        code, params = "video_frames_too_small", {"name": "clip.mp4", "width": 16, "height": 16, "min_side": 32}
    else:
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)  # a PNG signature, then nothing readable
        code, params = "unreadable_image", {"name": "photo.png"}
    e = _refusal(path, budget)
    assert e.code == code
    assert {k: e.params[k] for k in params} == params
    zh = error_text(e.code, e.params, "zh-CN", str(e))
    assert zh == ZH[f"error.{code}"].format(**params) and zh != str(e)
    assert error_text(e.code, e.params, "en", str(e)) == str(e)  # English: the raise's own message
