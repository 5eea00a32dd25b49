"""Malformed paper.yaml files give errors that name the file and the field."""

import shutil
from pathlib import Path

import pytest
import yaml

from common.harness import spec

TOY = Path(__file__).parent / "fixtures" / "papers" / "toy"


def write_toy(tmp_path, mutate):
    root = tmp_path / "papers"
    shutil.copytree(TOY, root / "toy")
    data = yaml.safe_load((root / "toy" / "paper.yaml").read_text())
    mutate(data)
    (root / "toy" / "paper.yaml").write_text(yaml.safe_dump(data))
    return root


def test_toy_fixture_loads():
    paper = spec.load("toy", TOY.parent)
    assert paper.notebooks == ("01_toy.ipynb",)
    assert [c.id for c in paper.claims_for("full")] == ["mean_small"]
    assert paper.overrides("full", "01_toy.ipynb") == {"n": 5000}
    assert paper.overrides("ci", "01_toy.ipynb") == {}


def test_unknown_paper_names_the_known_ones():
    with pytest.raises(spec.UnknownPaperError, match="unknown paper 'nosuch'.*toy"):
        spec.load("nosuch", TOY.parent)


def test_invalid_yaml(tmp_path):
    root = tmp_path / "papers"
    shutil.copytree(TOY, root / "toy")
    (root / "toy" / "paper.yaml").write_text("title: [unclosed\n")
    with pytest.raises(spec.PaperSpecError, match="not valid YAML"):
        spec.load("toy", root)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("title"), "missing required field 'title'"),
    (lambda d: d.update(year="2024"), "field 'year' must be of type int"),
    (lambda d: d.update(colour="red"), "unknown field"),
    (lambda d: d.update(notebooks=["toy.ipynb"]), "NN_<name>.ipynb"),
    (lambda d: d.update(profiles={"ci": {"01_toy": {"n": 1}}}), "takes no overrides"),
    (lambda d: d.update(profiles={"full": {"02_missing": {"n": 1}}}), "no such notebook"),
    (lambda d: d["claims"][0].pop("source"), "missing required field 'source'"),
    (lambda d: d["claims"][0].update(check="toy.mean <"), "cannot parse"),
    (lambda d: d["claims"][0].update(check="1 < 2"), "names no metric"),
    (lambda d: d["claims"][0].update(check="__import__('os')"), "unknown function"),
    (lambda d: d["claims"][0].update(profiles=["gpu"]), "profiles must be"),
    (lambda d: d["claims"][0].update(expected_outcome="not_reproduced"), "needs an explanation"),
    (lambda d: d["claims"][0].update(expected_outcome={"full": "not_reproduced"}), "needs an explanation"),
    (lambda d: d["claims"][0].update(expected_outcome={"full": "maybe"}, explanation="x"), "or a mapping"),
    (lambda d: d["claims"][0].update(expected_outcome={"gpu": "not_reproduced"}, explanation="x"),
     "names profile.*does not apply"),
    (lambda d: d["claims"][1].update(id="mean_small"), "duplicate claim id"),
    (lambda d: d["claims"][0].update(weight=0), "weight must be a positive number"),
    (lambda d: d["claims"][0].pop("kind"), "missing required field 'kind'"),
    (lambda d: d["claims"][0].update(kind="theorem"), "kind must be one of"),
    (lambda d: d["claims"][0].update(decisive="toy.std > 0.5"), "needs an explanation"),
    (lambda d: d["claims"][0].update(decisive="1 < 2", explanation="x"), "decisive .* names no metric"),
    (lambda d: d["claims"][0].update(check="toy.mean < 2.0 ** 2000"), "overflow"),
    (lambda d: d["claims"][0].update(check="toy.mean < 9 ** 9 ** 9"), "overflow"),
    (lambda d: d["claims"][0].update(value="10 ** 100000 + toy.mean"), "value: overflow"),
])
def test_malformed_fields_are_named(tmp_path, mutate, message):
    root = write_toy(tmp_path, mutate)
    with pytest.raises(spec.PaperSpecError, match=message) as info:
        spec.load("toy", root)
    assert "paper.yaml" in str(info.value)


def test_expected_outcome_per_profile(tmp_path):
    """``expected_outcome: {full: not_reproduced}``: an effect that holds at ci and honestly flips at full."""
    def mutate(d):
        d["claims"][0].update(profiles=["ci", "full"], expected_outcome={"full": "not_reproduced"},
                              explanation="flips at full")
    paper = spec.load("toy", write_toy(tmp_path, mutate))
    claim_id = paper.claims[0].id
    by = {p: {c.id: c for c in paper.claims_for(p)}[claim_id] for p in ("ci", "full")}
    assert by["ci"].expected_outcome == "reproduced" and by["full"].expected_outcome == "not_reproduced"
    assert paper.claims[0].expected_label() == "not reproduced at full"
