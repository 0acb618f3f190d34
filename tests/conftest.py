"""Shared fixtures: one tiny random Qwen3-VL checkpoint per test session, real transformers code paths on it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from skip_policy import pytest_make_collect_report, pytest_runtest_makereport  # noqa: E402,F401 - CI: skips fail

pytest_plugins = ["pytester"]  # tests/test_skip_policy.py runs the skip policy on a scratch suite

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rag.models.tiny import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("tiny-qwen3-vl"), size="tiny")


@pytest.fixture(scope="session")
def embedder(tiny_model_dir: Path):
    from rag.models.embedder import Embedder

    return Embedder.from_pretrained(tiny_model_dir, dtype="float32", device="cpu")


@pytest.fixture(scope="session")
def reranker(tiny_model_dir: Path):
    from rag.models.reranker import Reranker

    return Reranker.from_pretrained(tiny_model_dir, dtype="float32", device="cpu")


@pytest.fixture(scope="session")
def generator(tiny_model_dir: Path):
    from rag.models.generator import Generator

    return Generator.from_pretrained(tiny_model_dir, dtype="float32", device="cpu")


def noise_image(seed: int, w: int = 160, h: int = 120):
    from PIL import Image

    return Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype("uint8"))


def write_video(path: Path, n_frames: int, fps: int = 4, size: int = 64) -> Path:
    """A real H.264/MPEG-4 clip written with PyAV."""
    import av

    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(n_frames):
            arr = np.zeros((size, size, 3), dtype=np.uint8)
            arr[:, :, i % 3] = (40 + 20 * i) % 256
            arr[i * 4 % size:, : size // 2] = 255
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("media")
    noise_image(1).save(d / "a.png")
    noise_image(2, 640, 480).save(d / "b.jpg", quality=90)
    write_video(d / "clip.mp4", n_frames=12)
    write_video(d / "one_frame.mp4", n_frames=1)
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20)
    return d


MINI_CASES = [
    ("prn-e13", "Fuser error E13 on laser printer", "printers", "LP-500", ["fuser", "error-code"], (200, 40, 40)),
    ("prn-jam2", "Paper jam in tray 2", "printers", "LP-500", ["paper-jam"], (40, 200, 40)),
    ("hvac-f3", "Rooftop unit fault F3: high pressure", "hvac", "RTU-20", ["pressure"], (40, 40, 200)),
    ("pump-seal", "Pump seal leak, pressure drops to 0 bar", "pumps", "CP-7", ["leak", "seal"], (200, 200, 40)),
]


def case_picture(seed: int, colour: tuple[int, int, int], w: int = 192, h: int = 144):
    """A distinct 'equipment screen' per case: coloured panel, bars at seed-dependent places."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (w, h), colour)
    d = ImageDraw.Draw(img)
    rng = np.random.RandomState(seed)
    for _ in range(5):
        x, y = int(rng.randint(0, w - 40)), int(rng.randint(0, h - 30))
        d.rectangle([x, y, x + 40, y + 30], fill=tuple(int(c) for c in rng.randint(0, 255, 3)))
    return img


def populate_store(store, embedder, media_root: Path, cases=MINI_CASES) -> dict[str, Path]:
    """Write cases with the store payload contract of knowledge_base ingestion (text point + one image point)."""
    from rag.store.base import VectorPoint, point_id

    media_root.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    points = []
    for i, (cid, title, line, model, tags, colour) in enumerate(cases):
        rel = f"img/{cid}.png"
        (media_root / "img").mkdir(exist_ok=True)
        case_picture(i, colour).save(media_root / rel)
        paths[cid] = media_root / rel
        doc = f"{title}\nProduct line: {line}; model {model}\nSymptom: {title}.\nSolution: 1. check 2. replace"
        case = {"id": cid, "title": title, "product_line": line, "equipment_model": model, "tags": tags,
                "media": [{"id": f"m-{i:016x}", "kind": "image", "path": rel, "thumbnail": rel}]}
        common = {"case_id": cid, "product_line": line, "equipment_model": model, "tags": tags, "title": title}
        tv, mv = embedder.embed([{"text": doc}, {"image": str(media_root / rel)}])
        points.append(VectorPoint(id=point_id(cid, None), vector=tv, payload={**common, "media_id": None, "kind": "text",
                                                                             "case": case, "document": doc}))
        points.append(VectorPoint(id=point_id(cid, f"m-{i:016x}"), vector=mv, payload={
            **common, "media_id": f"m-{i:016x}", "kind": "image", "media_path": rel, "thumbnail": rel}))
    store.upsert(points)
    return paths
