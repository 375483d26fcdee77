"""The model card's generated parts: Hub metadata, a model-index of the evaluation's numbers, paper, citation."""

from __future__ import annotations

import json
import re

import pytest
from huggingface_hub import ModelCard

from teller_pipeline.pipeline_teller import INSTALL_COMMAND
from teller_recipe.model_card.model_card import PAPER_URL, render

from .conftest import CHECKPOINT, ROOT

EVALUATIONS = {  # what `teller_recipe.evaluation.evaluate` writes, cut to what the card reads
    "eval": ("examples/astronaut.png", {"held_out": (0.71937, 3.6581, 1.0), "real": (0.81012, 18.1529, 1.0)}),
    "eval_grace_hopper": ("examples/grace_hopper.jpg", {"held_out": (0.8141, -2.775, 1.0),
                                                         "real": (0.87103, 10.316, None)}),
}


def _run(tmp_path):
    run = tmp_path / "run"
    for folder, (portrait, groups) in EVALUATIONS.items():
        (run / folder).mkdir(parents=True)
        lip_sync = {g: {"r_pooled": r, "offset_ms": offset, "closed_share": closed}
                    for g, (r, offset, closed) in groups.items()}
        (run / folder / "metrics.json").write_text(json.dumps({"portrait": portrait, "lip_sync": lip_sync}))
        rows = [f"| {g}: r pooled | {r:.3f} | PASS |" for g, (r, _, _) in groups.items()]
        (run / folder / "metrics.md").write_text(
            "# Teller evaluation\n\nCheckpoint, portrait.\n\n## Targets\n\n| target | measured | result |\n"
            "|---|---|---|\n" + "\n".join(rows) + "\n\n## (a) lip sync and (b) silence\n\n(tables)\n"
        )
    return run


def test_card_front_matter_paper_citation_and_one_h1(tmp_path):
    text = render(CHECKPOINT, _run(tmp_path), corpus=None, speed=ROOT / "README.md")
    card = ModelCard(text)
    assert card.data.library_name == "diffusers" and card.data.pipeline_tag == "image-to-video"
    assert card.data.base_model == "openai/whisper-base"

    measured = {(r.dataset_config, r.dataset_type, r.metric_type): r.metric_value
                for r in card.data.eval_results}
    assert measured == {
        ("astronaut", "teller-synthetic-speech", "pearsonr"): 0.719,
        ("astronaut", "teller-synthetic-speech", "offset_ms"): 3.7,
        ("astronaut", "teller-synthetic-speech", "closed_in_silence"): 1.0,
        ("astronaut", "cmu-arctic", "pearsonr"): 0.810,
        ("astronaut", "cmu-arctic", "offset_ms"): 18.2,
        ("astronaut", "cmu-arctic", "closed_in_silence"): 1.0,
        ("grace_hopper", "teller-synthetic-speech", "pearsonr"): 0.814,
        ("grace_hopper", "teller-synthetic-speech", "offset_ms"): -2.8,
        ("grace_hopper", "teller-synthetic-speech", "closed_in_silence"): 1.0,
        ("grace_hopper", "cmu-arctic", "pearsonr"): 0.871,
        ("grace_hopper", "cmu-arctic", "offset_ms"): 10.3,  # no silent frames: no closed share
    }
    for r in card.data.eval_results:  # the front matter's r is the number the card's tables print
        if r.metric_type == "pearsonr" and r.dataset_config == "astronaut":
            assert f"| {r.metric_value:.3f} |" in card.text

    outside_code = re.sub(r"```.*?```", "", card.text, flags=re.S)
    h1 = [line for line in outside_code.splitlines() if line.startswith("# ")]
    assert h1 == ["# Teller base (starter checkpoint)"]
    assert "#### Targets" in outside_code  # the evaluation report's headings sit under "## Evaluation"
    assert f"]({PAPER_URL})" in card.text and "2503.18429" in PAPER_URL
    assert "```bibtex\n@inproceedings{zhen2025teller," in card.text
    assert INSTALL_COMMAND in card.text and "trust_remote_code=True" in card.text


def test_card_without_evaluation_has_no_model_index(tmp_path):
    card = ModelCard(render(CHECKPOINT, tmp_path / "no-run", corpus=None, speed=None))
    assert card.data.base_model == "openai/whisper-base"
    assert not card.data.eval_results and "model-index" not in card.content.split("\n---", 2)[0]
    assert "Not evaluated yet." in card.text


def test_refreshing_sections_rewrites_only_those():
    from teller_recipe.model_card.model_card import refresh_sections

    card = ("# Card\n\n## Speed\n\nold speed\n\n### table\n\nold rows\n\n## Limitations\n\nold limits\n\n"
            "## Citation\n\nkept")
    fresh = "# Card\n\n## Speed\n\nnew speed\n\n## Limitations\n\nnew limits\n\n## Citation\n\nnot this one"
    refreshed = refresh_sections(card, fresh, ["## Speed", "## Limitations"])
    assert refreshed == "# Card\n\n## Speed\n\nnew speed\n\n## Limitations\n\nnew limits\n\n## Citation\n\nkept"
    with pytest.raises(ValueError, match="no section '## Nowhere'"):
        refresh_sections(card, fresh, ["## Nowhere"])
