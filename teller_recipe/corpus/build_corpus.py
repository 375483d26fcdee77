"""Build the synthetic training corpus: speech with known phone timing → motion, as a `datasets.DatasetDict`.

    python -m teller_recipe.corpus.build_corpus --output data/corpus --hours 3.0 --workers 2
    python -m teller_recipe.corpus.build_corpus --output data/corpus-tiny --tiny

Writes `<output>/` (`datasets.load_from_disk`), `<output>/summary.json` and a dataset card
`<output>/README.md`. The Piper voice's alignment-enabled copy is made once in `--cache-dir`.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import shutil
import time
import traceback
from collections import defaultdict
from pathlib import Path

import numpy as np

from . import speech as tts
from .corpus import (
    HELD_OUT,
    SPLITS,
    SentenceSource,
    UtteranceSpec,
    features,
    make_example,
    plan,
    voice_targets,
)
from .phonemes import SILENCE, from_columns
from .text import LICENCE, load_sentences

log = logging.getLogger("teller.corpus")
TINY_HOURS = 0.02


def _init_worker(cache_dir: str) -> None:
    # One thread per worker: the build parallelises over processes.
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = "1"
    global _CACHE_DIR
    _CACHE_DIR = cache_dir


_CACHE_DIR: str | None = None


def _work(job: tuple[UtteranceSpec, bool]) -> tuple[UtteranceSpec, dict | None, str | None]:
    spec, augment_audio = job
    try:
        return spec, make_example(spec, cache_dir=_CACHE_DIR, augment_audio=augment_audio), None
    except Exception:  # one bad sentence must not stop a 40-minute build; it is logged and replaced
        return spec, None, traceback.format_exc(limit=3)


def _run(jobs: list[UtteranceSpec], workers: int, cache_dir: str, augment_audio: bool, progress) -> list:
    """Make the examples (in parallel when workers > 1), calling `progress(spec, example, error)` for each."""
    results = []
    if workers <= 1:
        _init_worker(cache_dir)
        for spec in jobs:
            results.append(_work((spec, augment_audio)))
            progress(*results[-1])
        return results
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_init_worker, initargs=(cache_dir,)) as pool:
        for result in pool.imap_unordered(_work, [(s, augment_audio) for s in jobs], chunksize=1):
            results.append(result)
            progress(*result)
    return results


def _speech_seconds(example: dict) -> float:
    return sum(p.duration for p in from_columns(example["phonemes"]) if p.phone != SILENCE)


def build(
    output: str | Path,
    hours: float = 3.0,
    workers: int = 1,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    voices: list[str] | None = None,
    tiny: bool = False,
    augment_audio: bool = True,
) -> dict:
    """Build the corpus into `output`; returns the summary. `tiny`: one short utterance per voice."""
    started = time.perf_counter()
    output = Path(output)
    cache_dir = str(Path(cache_dir) if cache_dir else output.parent / "cache")
    voices = voices or list(tts.VOICES)
    if any(v.startswith("piper/") for v in voices):
        from .speech.piper import prepare_aligned_voice

        prepare_aligned_voice(Path(cache_dir) / "piper")  # once, before the workers start
    sentences = load_sentences()
    source = SentenceSource(sentences, seed)
    rng = np.random.default_rng(seed)
    targets = voice_targets(TINY_HOURS if tiny else hours, voices)
    made: dict[str, list[dict]] = defaultdict(list)
    seconds: dict[str, float] = defaultdict(float)
    failures: list[str] = []
    used: set[str] = set()  # distinct sentences spoken
    total_target = sum(targets.values())
    state = {"done": 0, "audio": 0.0, "speech": 0.0, "last_log": 0.0}

    def progress(spec: UtteranceSpec, example: dict | None, error: str | None) -> None:
        if example is None:
            failures.append(f"{spec.voice} {spec.sentences!r}: {error.strip().splitlines()[-1]}")
            log.warning("failed %s", failures[-1])
            return
        made[spec.split].append(example)
        used.update(spec.sentences)
        speech = _speech_seconds(example)
        seconds[spec.voice] += speech
        state["done"] += 1
        state["audio"] += example["duration"]
        state["speech"] += speech
        now = time.perf_counter() - started
        if now - state["last_log"] > 15:
            state["last_log"] = now
            speed = state["speech"] / max(now, 1e-6)
            log.info(
                "%5d utterances, %6.1f / %.1f min of speech (%.1f min audio), %.1fx real time, ~%.0fs left",
                state["done"],
                state["speech"] / 60,
                total_target / 60,
                state["audio"] / 60,
                speed,
                max(total_target - state["speech"], 0.0) / max(speed, 1e-6),
            )

    jobs = plan(targets, source, rng, max_utterances_per_voice=1 if tiny else None)
    log.info("planned %d utterances for %d voices (%.2f h)", len(jobs), len(voices), total_target / 3600)
    _run(jobs, workers, cache_dir, augment_audio, progress)
    log.info("first pass: %d utterances, %.1f min of speech", state["done"], state["speech"] / 60)
    # Estimates are rough and some sentences may fail: top up voices that fell short.
    for _ in range(3):
        if tiny:
            break
        short = {v: t - seconds[v] for v, t in targets.items() if seconds[v] < 0.995 * t}
        if not short:
            break
        extra = plan({v: 1.05 * s for v, s in short.items()}, source, rng, start_index=10**6 + len(jobs))
        jobs += extra
        log.info("topping up %d voices with %d utterances", len(short), len(extra))
        _run(extra, workers, cache_dir, augment_audio, progress)

    from datasets import Dataset, DatasetDict

    schema = features()
    splits = {}
    for split in SPLITS:
        rows = sorted(made.get(split, []), key=lambda e: e["id"])
        for k, row in enumerate(rows):
            row["id"] = f"{split}-{k:06d}"
        columns = {name: [row[name] for row in rows] for name in schema}
        splits[split] = Dataset.from_dict(columns, features=schema)
    corpus = DatasetDict(splits)
    if output.exists():
        shutil.rmtree(output)
    corpus.save_to_disk(str(output))
    summary = _summary(made, used, failures, time.perf_counter() - started, workers, seed, augment_audio)
    (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (output / "README.md").write_text(_card(summary))
    log.info("wrote %s in %.0f s", output, summary["build_seconds"])
    return summary


def _summary(made, used, failures, build_seconds, workers, seed, augment_audio) -> dict:
    """Hours of audio and of speech (pauses excluded) per split, engine and voice."""
    per_split, per_engine, per_voice = {}, defaultdict(lambda: [0.0, 0.0]), defaultdict(lambda: [0.0, 0.0])
    for split in SPLITS:
        rows = made.get(split, [])
        audio, speech = 0.0, 0.0
        for r in rows:
            spoken = _speech_seconds(r)
            audio, speech = audio + r["duration"], speech + spoken
            for table, key in ((per_engine, r["engine"]), (per_voice, r["voice"])):
                table[key][0] += r["duration"] / 3600
                table[key][1] += spoken / 3600
        per_split[split] = {
            "utterances": len(rows),
            "hours": round(audio / 3600, 4),
            "speech_hours": round(speech / 3600, 4),
            "voices": sorted({r["voice"] for r in rows}),
        }

    def table(hours: dict) -> dict:
        return {k: {"hours": round(a, 4), "speech_hours": round(b, 4)} for k, (a, b) in sorted(hours.items())}

    return {
        "hours": round(sum(v["hours"] for v in per_split.values()), 4),
        "speech_hours": round(sum(v["speech_hours"] for v in per_split.values()), 4),
        "splits": per_split,
        "engines": table(per_engine),
        "voices": table(per_voice),
        "held_out": {k: list(v) for k, v in HELD_OUT.items()},
        "distinct_sentences": len(used),
        "sentence_source": f"Princeton WordNet 3.0 usage examples (Debian wordnet-base); {LICENCE}",
        "failures": failures,
        "build_seconds": round(build_seconds, 1),
        "workers": workers,
        "seed": seed,
        "augmented": augment_audio,
    }


def _card(summary: dict) -> str:
    lines = [
        "# Teller synthetic talking-face corpus",
        "",
        "Speech from several synthesizers with known phone timing, and the face motion those phones imply",
        "(visemes with coarticulation, prosody-driven head and brow motion), made by",
        "`python -m teller_recipe.corpus.build_corpus`. Load with `datasets.load_from_disk`.",
        "",
        f"- audio: {summary['hours']:.2f} h ({summary['speech_hours']:.2f} h of it speech, the rest pauses)",
        f"- sentences: {summary['distinct_sentences']} distinct; {summary['sentence_source']}",
        f"- held out: {json.dumps(summary['held_out'])}",
        "- columns: audio (16 kHz float32), motion (T×69: 63 keypoint offsets in canonical cm, 3 axis-angle,",
        "  3 translation), identity_prior (21×3), mouth_opening (T), silence (T), phonemes (ARPAbet + sil),",
        "  text, voice, engine, augmentation, duration, synthesis (JSON settings)",
        "",
        "| split | utterances | hours (speech) | voices |",
        "|---|---|---|---|",
    ]
    for split, info in summary["splits"].items():
        lines.append(
            f"| {split} | {info['utterances']} | {info['hours']:.3f} ({info['speech_hours']:.3f}) | "
            f"{', '.join(info['voices'])} |"
        )
    for name in ("engines", "voices"):
        lines += ["", f"| {name[:-1]} | hours | speech hours |", "|---|---|---|"]
        lines += [f"| {k} | {v['hours']:.3f} | {v['speech_hours']:.3f} |" for k, v in summary[name].items()]
    lines += [
        "",
        "Engines and licences: Piper 1.8 (GPL-3 engine; joe voice MIT, CC0 data), espeak-ng (GPL-3),",
        "flite (BSD-like CMU licence), festival with CMU/CSTR voices (free licences). The synthesized audio",
        "is not a derivative of any recording covered by a restrictive licence.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", default="data/corpus")
    parser.add_argument(
        "--hours", type=float, default=3.0, help="hours of speech to make (pauses not counted)"
    )
    parser.add_argument("--tiny", action="store_true", help="one short utterance per voice (a smoke test)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cache-dir", default=None, help="where the Piper voice is prepared (default: <output>/../cache)"
    )
    parser.add_argument("--voices", nargs="*", default=None, help=f"subset of {', '.join(tts.VOICES)}")
    parser.add_argument("--no-augment", action="store_true", help="keep the clean synthesized audio")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    summary = build(
        args.output,
        args.hours,
        args.workers,
        args.seed,
        args.cache_dir,
        args.voices,
        args.tiny,
        not args.no_augment,
    )
    brief = {
        k: summary[k] for k in ("hours", "speech_hours", "engines", "distinct_sentences", "build_seconds")
    }
    print(
        json.dumps(
            {
                "splits": {
                    k: {"utterances": v["utterances"], "hours": v["hours"]}
                    for k, v in summary["splits"].items()
                },
                **brief,
            },
            indent=2,
        )
    )
    if summary["failures"]:
        print(f"{len(summary['failures'])} utterances failed (see summary.json)")


if __name__ == "__main__":
    main()
