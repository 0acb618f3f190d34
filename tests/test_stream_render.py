"""The streamed answer as the user sees it only grows: every render of :class:`StreamRenderer` is a prefix of the next
one and of the finished answer's ``inert_md`` (no flicker), even when a chunk ends inside something the auto-link
defusing rewrites later (``abc:/`` before the second ``/``)."""

from __future__ import annotations

import itertools

import pytest

from rag.pipeline.render import StreamRenderer, inert_md


def renders(chunks: list[str]) -> list[str]:
    """What the chat would show after each chunk (a render after every chunk: interval 0)."""
    r = StreamRenderer(interval=0.0)
    out = []
    for c in chunks:
        shown = r.feed(c)
        assert shown is not None
        out.append(shown)
    return out


def assert_only_grows(chunks: list[str]) -> None:
    shown = renders(chunks)
    final = inert_md("".join(chunks))  # what the chat shows once the answer is done
    for a, b in zip(shown, [*shown[1:], final], strict=True):
        assert b.startswith(a), (chunks, a, b)


# Expected renders written by hand: ":" and "." inside a ``scheme://`` become entities once the "//" is there, so
# until then the text from the first of them is held back, as a possible stop string is.
@pytest.mark.parametrize(("chunks", "expected"), [
    (["see ", "abc", ":", "/", "/host now"],
     ["see ", "see abc", "see abc", "see abc", "see abc&#58;//host now"]),
    (["docs at files.example", ".com:", "/", "/a b"],
     ["docs at files", "docs at files", "docs at files", "docs at files&#46;example&#46;com&#58;//a b"]),
    (["Step 1", ": check", " the fuse", ". Then"],  # a ":" or "." not followed by "//" is shown once settled
     ["Step 1", "Step 1: check", "Step 1: check the fuse", "Step 1: check the fuse. Then"]),
    (["go to www", ".", "example", ".com", " now"],  # a host name is held whole: it could still get a "://"
     ["go to www", "go to www", "go to www", "go to www", "go to www&#46;example.com now"]),
    (["打印机显示E13：", "请检查", "http:", "//x"],
     ["打印机显示E13：", "打印机显示E13：请检查", "打印机显示E13：请检查http", "打印机显示E13：请检查http&#58;//x"]),
])
def test_a_link_written_across_chunks_is_held_until_settled(chunks: list[str], expected: list[str]) -> None:
    assert renders(chunks) == expected
    assert_only_grows(chunks)


def test_every_chunking_of_short_texts_only_grows() -> None:
    """Every text of up to 5 characters from an alphabet that can spell schemes, ``www.``, e-mail, entities and
    control characters, streamed one character at a time."""
    alphabet = "aw.:/ @&\x01"
    for n in range(1, 6):
        for chars in itertools.product(alphabet, repeat=n):
            assert_only_grows(list(chars))


def test_the_settled_answer_is_shown_in_full() -> None:
    text = "Replace the fuse [case-1]; see https://example.com/manual or ops@example.com. Done"
    assert renders([text]) == [inert_md(text)]
