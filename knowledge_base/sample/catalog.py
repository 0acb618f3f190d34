"""The sample fault cases as data: ``cases.json`` (texts, how their pictures are drawn, questions, key facts).

Equipment and brands are fictional (Printek, Climatec, Hydra, PayStation) but faults, codes and fixes follow
real service practice, so retrieval and generation are exercised on realistic language.

The specs live in a data file so that cases (other languages, fault families, related pairs) are added without
touching code, and so that reading them never imports the drawing code (``scenes``/``draw``): only
``builder.build_sample_kb`` renders pictures.
"""

from __future__ import annotations

import json
from datetime import date
from functools import cached_property, lru_cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, JsonValue, ValidationError, model_validator

from knowledge_base.schema import LinkRelation, Severity

__all__ = ["CATALOG_JSON", "Catalog", "Img", "Link", "ManualPage", "OutOfKBImage", "Spec", "load_catalog"]

#: The shipped catalog (package data, next to this module).
CATALOG_JSON = Path(__file__).with_name("cases.json")

#: Parameters of one scene renderer (``scenes.render(scene, params, rng)``); each scene documents its own keys.
SceneParams = dict[str, JsonValue]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Img(_Frozen):
    """One picture of a case: scene renderer name, its parameters and the caption stored with it."""

    scene: str
    params: SceneParams
    caption: str


class Link(_Frozen):
    """A typed link to another case (written to ``cases.jsonl`` as is; linked cases count as partly relevant)."""

    case_id: str
    relation: LinkRelation


class Spec(_Frozen):
    """One fault case: the ``CaseInput`` fields plus what the generator needs (pictures, eval question, key facts)."""

    id: str
    title: str
    product_line: str
    equipment_model: str
    symptom: str
    cause: str
    solution: list[str]
    error_codes: list[str]
    tags: list[str]
    severity: Severity
    images: list[Img]
    #: Phrases a correct answer mentions (answer evaluation).
    key_facts: list[str]
    #: Day the case was written (``created_at`` = that day, 09:00 UTC).
    created: date
    #: A paraphrased text-only eval question, if any.
    ask: str | None = None
    links: list[Link] = []
    #: Ground-truth fault family (``ragvqa eval kb``: cluster agreement); optional, cases without one are left out.
    family: str | None = None


class Diagram(_Frozen):
    """The figure drawn on a manual page."""

    scene: str
    params: SceneParams


class ManualPage(_Frozen):
    """One page of the LX-4200 service manual and the case it belongs to; ``page`` goes to the ``manual_page`` scene."""

    case_id: str
    page: SceneParams
    diagram: Diagram


class OutOfKBImage(_Frozen):
    """A picture of equipment the KB does not cover (``appliance`` scene), with an optional question."""

    params: SceneParams
    question: str | None = None


class Catalog(_Frozen):
    """Everything the sample generator draws and writes; ids and cross references are checked on load."""

    model_config = ConfigDict(frozen=True, extra="forbid", ignored_types=(cached_property,))

    product_lines: list[str]
    cases: list[Spec]
    manual_pages: list[ManualPage]
    #: Out-of-KB text questions (the app should say it has no matching case).
    abstain_text: list[str]
    abstain_images: list[OutOfKBImage]
    #: Ground-truth related case pairs (unordered; ``ragvqa eval kb``: precision@k of related cases).
    related_pairs: list[tuple[str, str]] = []

    @cached_property
    def case_by_id(self) -> dict[str, Spec]:
        return {c.id: c for c in self.cases}

    @model_validator(mode="after")
    def _references(self) -> Catalog:
        ids = [c.id for c in self.cases]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"duplicate case ids: {dup}")
        known = set(ids)
        for c in self.cases:
            if c.product_line not in self.product_lines:
                raise ValueError(f"case {c.id}: product line {c.product_line!r} is not in product_lines")
            if not c.images:
                raise ValueError(f"case {c.id} has no picture")
            bad = [link.case_id for link in c.links if link.case_id not in known]
            if bad:
                raise ValueError(f"case {c.id} links to unknown case(s) {bad}")
        bad = sorted({c for pair in self.related_pairs for c in pair if c not in known})
        if bad:
            raise ValueError(f"related_pairs name unknown case(s) {bad}")
        bad = [p.case_id for p in self.manual_pages if p.case_id not in known]
        if bad:
            raise ValueError(f"manual pages belong to unknown case(s) {bad}")
        return self


def load_catalog(path: Path | str | None = None) -> Catalog:
    """Read and validate a catalog file (default: the shipped ``cases.json``, parsed once per process).

    A bad file raises ``ValueError`` naming the file and the problem.
    """
    if path is None:
        return _shipped()
    return _load(Path(path))


@lru_cache(maxsize=1)
def _shipped() -> Catalog:
    return _load(CATALOG_JSON)


def _load(path: Path) -> Catalog:
    try:
        return Catalog.model_validate(json.loads(path.read_text("utf-8")))
    except (OSError, json.JSONDecodeError, ValidationError) as e:
        raise ValueError(f"sample catalog {path}: {e}") from e
