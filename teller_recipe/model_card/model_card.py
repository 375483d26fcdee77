"""Write the checkpoint's Hub model card (`README.md`) from what the recipe measured.

    python -m teller_recipe.model_card.model_card --checkpoint checkpoints/teller-base --run runs/starter \
        --corpus data/corpus --speed README.md

Numbers come from files, never typed in: the corpus summary (`summary.json`), the recipe's step times
(`timings.tsv`), the evaluation tables (`eval/metrics.md`, `eval*/metrics.json` for the front matter's
`model-index`) and the README's Speed table. A missing file leaves a plain "not measured" line, so the card never
shows a number nobody measured.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from huggingface_hub import EvalResult, ModelCardData
from safetensors import safe_open

from teller_pipeline.hub import HUB_MODEL_ID
from teller_pipeline.pipeline_teller import INSTALL_COMMAND

COMPONENTS = ("audio_encoder", "motion_encoder", "motion_tokenizer", "motion_generator", "temporal_refiner", "renderer")
PAPER_URL = "https://arxiv.org/abs/2503.18429"
TAGS = ["talking-head", "audio-driven", "portrait-animation", "lip-sync", "streaming", "real-time", "teller"]
CITATION = """@inproceedings{zhen2025teller,
  title     = {Teller: Real-Time Streaming Audio-Driven Portrait Animation with Autoregressive Motion Generation},
  author    = {Zhen, Dingcheng and Yin, Shunshun and Qin, Shiyang and Yi, Hou and Zhang, Ziwei and Liu, Siyuan and
               Qi, Gan and Tao, Ming},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2025},
  eprint    = {2503.18429},
  archivePrefix = {arXiv}
}"""
# The evaluation's speech groups as model-index datasets (`teller_recipe.evaluation.evaluate`).
EVAL_DATASETS = {
    "held_out": dict(dataset_type="teller-synthetic-speech", dataset_split="test",
                     dataset_name="Held-out synthetic voices (the recipe's corpus, test split)"),
    "real": dict(dataset_type="cmu-arctic", dataset_name="CMU ARCTIC recordings (real human speech)"),
}


def _eval_results(run: Path | None) -> list[EvalResult]:
    """Lip sync on the rendered video (`eval*/metrics.json`) and the mouth's size (`portraits/metrics.json`), per
    portrait and speech group, at the precision the card's tables print."""
    results = []
    for file in sorted(run.glob("eval*/metrics.json")) if run else []:
        measured = json.loads(file.read_text())
        portrait = Path(measured["portrait"]).stem  # the dataset's configuration: the photo its speech animates
        for group, dataset in EVAL_DATASETS.items():
            summary = measured["lip_sync"].get(group)
            if not summary:
                continue
            metrics = [
                ("pearsonr", "lip sync r (rendered mouth opening vs the phones, pooled)", summary["r_pooled"], 3),
                ("offset_ms", "audio-to-mouth offset (ms)", summary["offset_ms"], 1),
                ("closed_in_silence", "mouth closed in silent frames (share)", summary["closed_share"], 3),
            ]
            results += _results(dataset, portrait, metrics)
    portraits = run / "portraits" / "metrics.json" if run else None
    if portraits and portraits.is_file():  # what a viewer sees: how far the lips part, at the table's precision
        for portrait, groups in json.loads(portraits.read_text())["portraits"].items():
            for group, dataset in EVAL_DATASETS.items():
                m = groups.get(group)
                if m:
                    results += _results(dataset, portrait, [
                        ("lip_gap_p90", "lip gap p90 (inner-lip gap / eye-corner distance)", m["gap_p90"], 3),
                        ("amplitude_ratio", "lip gap p90 / phone-implied p90", m["amplitude_ratio"], 3),
                        ("bilabial_ratio", "lip gap at p/b/m / at open vowels", m["bilabial_ratio"], 3),
                    ])
    return results


def _results(dataset: dict, portrait: str, metrics: list[tuple[str, str, float | None, int]]) -> list[EvalResult]:
    return [
        EvalResult(task_type="image-to-video", task_name="Audio-driven portrait animation", **dataset,
                   dataset_config=portrait, metric_type=kind, metric_name=name, metric_value=round(value, digits))
        for kind, name, value, digits in metrics if value is not None and np.isfinite(value)
    ]


def front_matter(checkpoint: Path, run: Path | None) -> str:
    """The card's YAML header: Hub metadata, the base model, and a model-index of the measured lip sync."""
    results = _eval_results(run)
    data = ModelCardData(
        library_name="diffusers", pipeline_tag="image-to-video", license="apache-2.0", language=["en"], tags=TAGS,
        base_model="openai/whisper-base",  # the audio encoder, converted (teller_recipe.conversion.convert_whisper)
        model_name=checkpoint.name if results else None, eval_results=results or None,
    )
    return f"---\n{data.to_yaml()}\n---\n"


def _demote(markdown: str, levels: int) -> str:
    """Headings of an included report pushed `levels` down, so the card keeps its one H1."""
    return "\n".join("#" * levels + line if line.startswith("#") else line for line in markdown.splitlines())


def _parameters(checkpoint: Path) -> dict[str, int]:
    counts = {}
    for name in COMPONENTS:
        counts[name] = 0
        for file in (checkpoint / name).glob("*.safetensors"):
            with safe_open(file, "np") as weights:
                for key in weights.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                    counts[name] += int(np.prod(weights.get_slice(key).get_shape()))
    return counts


def _config(checkpoint: Path, name: str) -> dict:
    return json.loads((checkpoint / name / "config.json").read_text())


def _read(path: Path | None, missing: str) -> str:
    return path.read_text().strip() if path and path.is_file() else missing


def _speed(readme: Path | None) -> str:
    """The measured table, machine description and re-runs of the project README's "## Speed" section."""
    if not readme or not readme.is_file():
        return "Not measured yet: run `python -m teller_recipe.benchmark.benchmark`."
    text = readme.read_text()
    if "## Speed" not in text:
        return "Not measured yet: run `python -m teller_recipe.benchmark.benchmark`."
    section = text.split("## Speed", 1)[1].split("\n## ", 1)[0]
    paragraphs = [p.strip() for p in section.split("\n\n")]
    keep = [p for p in paragraphs if p.startswith(("Machine:", "|", "Re-run:", "Long run", "For comparison"))]
    command = "Command: `python -m teller_recipe.benchmark.benchmark --repeats 2` (see the project README)."
    return "\n\n".join([*keep, command])


def _timings(run: Path | None) -> str:
    file = run / "timings.tsv" if run else None
    if not file or not file.is_file():
        return "Not measured for this checkpoint."
    # A step run again (its output deleted, e.g. to re-evaluate) appends a new line: its latest time counts.
    latest = dict(line.split("\t") for line in file.read_text().splitlines() if line.strip())
    rows = list(latest.items())
    total = sum(float(seconds) for _, seconds in rows)
    lines = ["| step | wall time |", "|---|---|"]
    lines += [f"| {name} | {float(seconds) / 60:.1f} min |" for name, seconds in rows]
    lines.append(f"| **total** | **{total / 60:.1f} min** |")
    return "\n".join(lines)


def _other_portraits(run: Path | None) -> str:
    """The targets table of any further evaluation (`RUN/eval_*`, e.g. another portrait)."""
    sections = []
    for file in sorted(run.glob("eval_*/metrics.md")) if run else []:
        text = file.read_text()
        header = text.split("\n\n", 2)[1] if "\n\n" in text else ""
        table = text.split("## Targets", 1)[1].split("\n## ", 1)[0].strip() if "## Targets" in text else ""
        if table:
            sections.append(f"### The same evaluation on another portrait\n\n{header}\n\n{table}")
    return "\n\n".join(sections)


CARD_SHEETS = ("grace_hopper", "obama_speaking", "astronaut", "party_three_quarter")  # shown on the card


def _portraits(run: Path | None, checkpoint: Path) -> str:
    """The per-portrait table of `teller_recipe.evaluation.portraits` (`RUN/portraits`), with a few of its contact
    sheets and gap plots copied into the checkpoint's `images/` (sheets as JPEG, to keep the folder small)."""
    folder = run / "portraits" if run else None
    if not folder or not (folder / "metrics.md").is_file():
        return "Not evaluated yet (`python -m teller_recipe.evaluation.portraits`)."
    from PIL import Image

    images = checkpoint / "images"
    images.mkdir(exist_ok=True)
    shown = []
    for name in CARD_SHEETS:
        sheet, plot = folder / "sheets" / f"{name}.png", folder / "plots" / f"{name}_gap.png"
        if sheet.is_file():
            Image.open(sheet).convert("RGB").save(images / f"{name}_sheet.jpg", quality=85)
            shown.append(f"![{name}: widest frames, a p/b/m frame, a blink, a pause](images/{name}_sheet.jpg)")
        if plot.is_file():
            (images / f"{name}_gap.png").write_bytes(plot.read_bytes())
            shown.append(f"![{name}: lip gap over time against the phone-implied gap](images/{name}_gap.png)")
    return folder.joinpath("metrics.md").read_text().strip() + "\n\n" + "\n\n".join(shown)


def _hours(corpus: Path | None) -> str:
    file = corpus / "summary.json" if corpus else None
    if not file or not file.is_file():
        return "?"
    return f"{json.loads(file.read_text())['speech_hours']:.2f}"


def _corpus(corpus: Path | None) -> str:
    file = corpus / "summary.json" if corpus else None
    if not file or not file.is_file():
        return "Corpus summary not available."
    summary = json.loads(file.read_text())
    lines = [
        f"- {summary['hours']:.2f} h of audio, {summary['speech_hours']:.2f} h of it speech; "
        f"{summary['distinct_sentences']} distinct sentences ({summary['sentence_source']}).",
        f"- Held-out voices: validation {', '.join(summary['held_out']['validation'])}; "
        f"test {', '.join(summary['held_out']['test'])}.",
        "",
        "| engine | hours (speech) |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v['hours']:.2f} ({v['speech_hours']:.2f}) |" for k, v in summary["engines"].items()]
    lines += ["", "| split | utterances | hours |", "|---|---|---|"]
    lines += [f"| {k} | {v['utterances']} | {v['hours']:.2f} |" for k, v in summary["splits"].items()]
    return "\n".join(lines)


def _architecture(checkpoint: Path) -> str:
    m = {k: v / 1e6 for k, v in _parameters(checkpoint).items()}
    gen = _config(checkpoint, "motion_generator")
    tok = _config(checkpoint, "motion_tokenizer")
    ref = _config(checkpoint, "temporal_refiner")
    window = f"{gen['audio_window_seconds']} s window + {gen['audio_lookahead_seconds']} s lookahead"
    rows = [
        ("audio_encoder", f"whisper-base encoder (OpenAI, MIT), converted from CTranslate2; {window} per 200 ms "
         "slice, 50 Hz, 512-d; frozen; stored fp16", f"{m['audio_encoder']:.1f} M"),
        ("motion_encoder", "MediaPipe's 478 landmarks ↔ Teller's 25×3 motion latent (21 keypoint offsets, "
         "rotation, translation/scale), fitted to MediaPipe's canonical face mesh",
         f"{m['motion_encoder']:.2f} M (constants)"),
        ("motion_tokenizer", f"residual VQ ({tok['num_quantizers']} quantizers × {tok['codebook_size']} codes) "
         "over 5-frame (200 ms) motion windows", f"{m['motion_tokenizer']:.1f} M"),
        ("motion_generator", f"Qwen2 decoder ({gen['num_layers']} layers, width {gen['hidden_size']}, random "
         f"init): [identity prior] then per slice 5 audio tokens + {gen['num_quantizers']} motion tokens, 2 per "
         f"step, top-k; KV cache; context bounded to {gen['max_context_slices']} slices",
         f"{m['motion_generator']:.1f} M"),
        ("temporal_refiner", f"ETM: residual convolutions ({ref['num_layers']} layers, width {ref['hidden_dim']}) "
         "over recent motion + the slice's audio, causal across slices; trained on the generator's own "
         "sampled output, run over 4 slices at a time on its own earlier output as in streaming, the lips "
         "weighted 4× in its loss; expression movements scaled by "
         f"{ref.get('expression_gain', 1.0):.2f} (the shrinkage measured on the validation split)"
         + (f"; a closure gate (a second head: the probability that the lips meet) closes them where it is above "
            f"{ref['closure_threshold']} for {ref.get('closure_min_frames', 1)} frames or more"
            if ref.get("closure_gate") else ""),
         f"{m['temporal_refiner']:.2f} M"),
        ("renderer", "geometric: a mesh-driven warp of the whole photo, synthesized oral cavity and teeth, "
         "eyelid closing", "buffers only"),
    ]
    lines = ["| component | what | parameters |", "|---|---|---|"]
    return "\n".join(lines + [f"| `{name}` | {what} | {size} |" for name, what, size in rows])


def render(checkpoint: Path, run: Path | None, corpus: Path | None, speed: Path | None) -> str:
    return f"""{front_matter(checkpoint, run)}
# Teller base (starter checkpoint)

A small, CPU-trained checkpoint of **Teller**, an implementation of
[*Teller: Real-Time Streaming Audio-Driven Portrait Animation with Autoregressive Motion Generation*]({PAPER_URL})
(Zhen et al., CVPR 2025) with RealTalk's identity-prior conditioning. One portrait photo + speech (a file or a live
microphone) → a talking-head video whose lips, jaw, eyes and head move with the voice, in real time on a CPU.

## Use

The code is the `teller_pipeline` package (Apache-2.0; the project's source also holds the app and the training
recipe). It is not on PyPI; in the project's source:

```bash
{INSTALL_COMMAND}
```

```python
from teller_pipeline import TellerPipeline

pipe = TellerPipeline.from_pretrained("{HUB_MODEL_ID}")   # or a local folder
pipe(image="portrait.jpg", audio="speech.wav", seed=0).save("talk.mp4")
```

diffusers' own loader returns the same pipeline: `DiffusionPipeline.from_pretrained("{HUB_MODEL_ID}",
trust_remote_code=True)`. The repository's `.py` files (`pipeline_teller.py`, one per component folder) only
import those classes from the installed package. Offline (`HF_HUB_OFFLINE=1`), load a cached copy with
`TellerPipeline.from_pretrained`: diffusers 0.42 still asks the Hub for the commit of a repository's code.
`dtype=torch.float16` (or `torch_dtype=`) loads the neural parts in half precision, and `pipe.to("cuda")` runs them
on a GPU; the motion encoder and renderer compute in numpy on the CPU.

## Architecture

{_architecture(checkpoint)}

The face landmarker (`face_landmarker/face_landmarker.task`, MediaPipe, Apache-2.0, float16 v1, sha256
`64184e22…c9ff`) is a fixed analysis model kept in the folder so it loads offline.

Differences from the paper, forced by the setting (no GPU, no talking-head video data, no model hub): the
renderer is geometric rather than a neural generator; the transformer is small; training data is synthetic
speech with known phone timing, from which face motion is synthesized, rather than real talking-head video.

## Training data

Speech from four synthesizers and 23 voices (Piper with the MIT `joe` voice and two pitch-shifted variants;
espeak-ng, 12 variants with several accents; flite, 5 CMU voices; festival, 3 CMU/CSTR voices), speaking rate
and pitch varied, augmented with noise at several SNRs, room reverberation, gain, telephone band-limiting and
resampling. Phone timings → visemes with coarticulation → 25 fps motion latents; head motion tied to prosody
(nods on stresses, slow drift), blinks, brow raises, a relaxed closed mouth in pauses. Sentences: Princeton
WordNet 3.0 usage examples (WordNet licence, permissive). Engines: Piper (GPL-3 engine, MIT voice, CC0 data),
espeak-ng (GPL-3), flite (CMU, BSD-style), festival (free licences). No recordings of real people are used
for training.

{_corpus(corpus)}

## Recipe

`bash training/recipe.sh` (see `training/README.md`): corpus → whisper features → tokenizer → generator →
refiner → this folder → evaluation, on 2 CPU cores. This checkpoint was made by that command with its defaults
({_hours(corpus)} h of speech); measured wall times of its steps, on the machine described under Speed, are below
(`training/README.md` says which steps shared the machine with other jobs):

{_timings(run)}

## Evaluation

`python -m teller_recipe.evaluation.evaluate`: held-out voices (whole voices never seen in training) and real human
recordings (CMU ARCTIC). Lip sync is measured on the *rendered* video: the face landmarker is run on the output
frames and the mouth opening compared with the opening implied by the phone timeline (forced alignment with
pocketsphinx for the real recordings).

{_demote(_read(run / "eval" / "metrics.md" if run else None, "Not evaluated yet."), 2)}
{_other_portraits(run)}

### What a viewer sees, per portrait

`python -m teller_recipe.evaluation.portraits`: every example portrait speaks two real recordings joined with
ordinary pauses, and eight held-out utterances, at default settings; the face landmarker measures the rendered
frames. The lip gap is in units of the outer eye-corner distance (0.11 ≈ 1 cm on an adult); the implied gap is
what the phones ask for. Contact sheets: the three widest-open frames, the median p/b/m frame, a blink and a
pause, at full resolution, with the mouths enlarged (nearest neighbour) underneath.

{_portraits(run, checkpoint)}

## Speed

{_speed(speed)}

## Limitations

- Mouth size (table "What a viewer sees" above: `python -m teller_recipe.evaluation.portraits`, the recipe's
  step, on 2026-12-04, eleven portraits, sampling seed 0): at default settings, on real speech with pauses, the
  landmarker reads the lips parting to a p90 of 0.111–0.158 of the eye-corner distance (≈ 1–1.5 cm) and a maximum
  of 0.175–0.27, 0.88–1.24 of what the phones ask, on ten of eleven portraits; the head bowed 30° reads 0.070 (its
  driven lips part 0.099, the render shows ~70 % of that). On that photo's widest frames the landmarker puts the
  inner upper lip across the synthesized upper teeth and the inner lower lip on the lower teeth and tongue (0.63–0.68
  of the driven gap, a probe), and a frontal gap is foreshortened there by the 30° pitch (×0.86). The closed-mouth
  photos sit at or under issue 11's 0.12 line (Grace Hopper 0.111, jesper_speaking 0.115, the bearded photo 0.119,
  the astronaut 0.122, Biden 0.128); the render reads ~0.94 of the driven gap at the widest frames, and the lips are
  driven to 0.117–0.130 there. One refiner run against another moves this by about as much: three refiners trained
  on this checkpoint's generator (`train_refiner.py --seed 0 / 1 / 2`, the recipe's is 1) drive Grace Hopper's real
  speech to 0.121 / 0.119 / 0.121 before rendering (`portraits --driven-only --seeds 2 --corpus data/corpus-test`),
  the previous checkpoint's 0.128 (its refiner chosen as the larger of two runs, 0.118 and 0.126).
  The photos whose lips are apart overshoot (ratio 1.14–1.24): at small openings the
  landmarker reads their rendered lips further apart than they are driven (0.025 → ~0.06), from the sealed seam
  (Obama speaking: the landmarker puts the inner upper lip in a dark strip of the photo's upper lip) and, on the two
  scanned smiles, from the whole mouth, which reads ~3 px taller than drawn whatever the seam looks like. Closed
  photos part where their lips meet in the photo (`GeometricRenderer.lip_seam_reach`), not at the landmarker's
  inner-lip line, which can lie a few pixels into a lip, and their mouth interior is as dark as a real one (a lit,
  lip-red cavity was read as lip). Openings under ~0.05 still read smaller than driven, mostly the landmarker's own
  dead zone on these faces. Identity priors are clamped to the training faces' range
  (`MotionGenerator.fit_identity_range`) and lose their depth (`in_image_plane`): real photos land far outside a
  synthetic corpus' faces, and the generator answered them with a nearly shut mouth (smiling and turned faces p90
  0.059–0.074 before the clamp; Obama speaking, photographed mid-word, 0.046–0.069 before the depth went).
- Held-out synthetic voices, size: the lips part 0.85–1.16 of what the phones ask on ten portraits (the head bowed
  30° 0.51, as above). Since this checkpoint the corpus' lip motion is an offset from each speaker's resting face
  with its lips closed, as the runtime decodes it (`motion_synth.synthesize_motion`); before, the quarter of speakers
  whose face rests with the lips parted lost that opening from every opening (their own motion read 0.25–0.63 of what
  the phones ask), and the model trained on it parted the lips 0.79–0.84 of it on four closed-mouth portraits. Before
  rendering, on the same held-out utterances (`portraits --driven-only --seeds 2 --corpus data/corpus-test`), the
  retrained model's ratio is 0.02–0.08 higher on every portrait (the astronaut 0.797 → 0.820, Grace Hopper 0.870 →
  0.895; training/README.md, "Mouth size on held-out voices and the corpus' resting faces").
- Held-out synthetic voices: the lips meet less on p/b/m than on real recordings (bilabial ratio 0.10–0.55 on
  the held-out group, ≤ 0.3 on seven of eleven portraits, 0.19–0.32 in the lips the refiner drives; 0.00–0.21 on
  real speech except the three-quarter view, 0.35, whose closed seam the landmarker reads ~0.05 apart). The
  refiner's closure gate (a second head deciding that the lips meet; training/README.md, "A closure gate") brought
  this, on the previous checkpoint's generator, from 0.16–0.60, ≤ 0.3 on four portraits, at a cost: held-out
  sync r 0.73–0.80 where it was 0.77–0.82
  (obama_smile 0.815 → 0.729), held-out amplitude ratios down by up to 0.03, and about 2 % of the real-speech
  size above. The whisper features the model hears carry about that much: a small network trained on them alone to
  predict the corpus' lip gap reaches 0.33, and a refiner pushed to close further by its loss
  (`train_refiner.py --closure_weight`) reached 0.26–0.28 but lost sync (r 0.71 → 0.65–0.68) and size
  (training/README.md, "Lips that meet on p, b and m").
- A mouth photographed open is closed by geometry (`MotionEncoder.close_lips`): in the pauses of real and
  held-out speech the lips meet in ≥ 90 % of silent frames on nine of eleven portraits (Obama speaking since the
  seal covers its photo's dark mouth corners); on the two scanned party photos, broad smiles with the lips apart,
  the seam looks closed on the contact sheets, but the landmarker reads the lips 0.025–0.05 apart.
- Head motion measured on rendered frames is dominated by the landmarker's own frame-to-frame noise (the
  corpus' motion rendered and measured the same way reads within 1.12–1.35× of the generated). Before rendering,
  the default 0.3 s head smoothing keeps the generated head's speed within 1.21–1.45× and its jitter within
  1.37–1.62× of the corpus' motion of the same utterances, over issue 11's 1.5× on four portraits (table above);
  this checkpoint's head is ~10 % livelier than the previous one's on the same utterances (held-out speed 3.6–4.0 →
  3.8–4.4 deg/s, `portraits --driven-only --seeds 2 --corpus data/corpus-test`), a difference between two training
  runs, not a change in the corpus' head motion. Its slow sway is about half the corpus' and lags the speech by ~0.3 s.
- Trained only on synthetic voices and synthesized motion: lip shapes follow a viseme model, not real
  faces, and expressiveness (emotion, gaze, large head turns) is limited.
- The geometric renderer moves the photo's own pixels: large head rotations, profile photos, occlusions
  (hands, microphones), heavy beards and glasses can show distortion; teeth and mouth interior are synthesized.
  A photo's own teeth ride on its upper lip and the rest of its lip gap on the lower one (`mouth._below_upper_teeth`);
  the synthesized cavity between them is dark and plain, its lower teeth and tongue standing on the photo's own
  lower interior, and on a broad smile that opens a little further it shows as a thin dark line under the teeth.
  Where a photo shows both rows of teeth (jesper_speaking), a wide opening is a flat dark band between them, with
  round ends that reach a little past the photo's teeth toward the corners. The synthesized part ends in round caps
  0.12 half mouth widths inside the inner corners (`mouth.CORNER_INSET`), where the photo's own lips and mouth
  corners show as the warp moves them: drawn up to the points of the landmarks' outline, the blunt opening of the
  bowed head ended in a hard black wedge reaching into the skin (`tests/test_renderer.py -k wide_opening`). The
  landmarker reads the widest frames a little smaller for it (Grace Hopper's real-speech maximum 0.206 → 0.199, on
  the previous checkpoint).
  A face cut by the photo's edge (jesper_head_down's forehead, at the top) cannot bring in what lies beyond it:
  as the head rises or turns, the rows next to that edge stretch and the motion there is held back to half their
  distance from it (`tests/test_renderer.py -k "cut_by_the_top_edge or head_turn"`).
  Where a turned face folds over itself (the nose over a cheek, the jaw over the neck) the warp is drawn per pixel
  along the fold (`warp.seam_boxes`), so the outline there is a hard edge rather than a sawtooth or a dark line
  down the nose (`tests/test_renderer.py -k per_pixel_warp`). The strips of anchors around the face start at its
  outline, the landmarks reaching furthest out, not at the oval, which on a turned face lies behind the cheek:
  strips started there showed the far cheek's edge a second time when the head moved (`-k strips_around`). Where
  the photo's own mesh is folded (that far cheek: 29 triangles wound the other way round on jesper_head_down) and
  the motion reshapes the fold by more than 3 px, it is drawn per pixel too (`warp.folded_triangles`); on the bowed
  head turned 10° a 1-px skin-coloured fringe remains along that cheek's edge.
  On the full beard (`giunchedi_beard.jpg`, real speech, `python -m teller_recipe.evaluation.portraits --corpus
  none --held-out 0`, 2026-12-02) the mouth opens with teeth and a dark cavity and closes on p/b/m and in pauses
  (bilabial ratio 0.03, closed in 100 % of silent frames, r 0.90), but reads small like the other closed-mouth
  photos: p90 0.106, maximum 0.19, ratio 0.83 (driven p90 0.135); the lower lip shows only as a thin line above
  the beard.
- English speech only was used for training; other languages move the lips less accurately.
- One face is animated (the largest); the rest of the photo only follows the head.

## Intended use and misuse

Intended for research, education, accessibility (giving a face to a voice the speaker owns), and
prototyping avatars from photos of people who consented. **Do not** use it to impersonate anyone, to make a
person appear to say something they did not say, for fraud, harassment or political deception, or with a
photo or voice of someone who has not agreed. Disclose that videos made with it are synthetic.

## Citation

```bibtex
{CITATION}
```
"""


def refresh_sections(card: str, fresh: str, headings: list[str]) -> str:
    """`card` with the sections under each of `headings` (a heading line such as "## Speed", to the next heading of
    its level or above) replaced by the same sections of `fresh`."""
    for heading in headings:
        level = len(heading) - len(heading.lstrip("#"))
        parts = []
        for text in (card, fresh):
            lines = text.split("\n")
            if heading not in lines:
                raise ValueError(f"no section {heading!r} in the {'card' if text is card else 'new card'}")
            start = lines.index(heading)
            end = next((i for i in range(start + 1, len(lines))
                        if lines[i].startswith("#") and len(lines[i]) - len(lines[i].lstrip("#")) <= level
                        and lines[i][len(lines[i]) - len(lines[i].lstrip("#")):].startswith(" ")), len(lines))
            parts.append((lines, start, end))
        (lines, start, end), (new_lines, new_start, new_end) = parts
        card = "\n".join(lines[:start] + new_lines[new_start:new_end] + lines[end:])
    return card


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="checkpoints/teller-base")
    parser.add_argument("--run", default="runs/starter", help="recipe folder (timings.tsv, eval/metrics.md)")
    parser.add_argument("--corpus", default="data/corpus")
    parser.add_argument("--speed", default="README.md", help="the project README (its measured Speed section)")
    parser.add_argument("--refresh", nargs="+", metavar="HEADING",
                        help='rewrite only these sections of the existing card (e.g. "## Speed" "## Limitations" '
                             '"### What a viewer sees, per portrait"), from what is at hand: the rest of the card '
                             "stays as the recipe's run wrote it")
    args = parser.parse_args(argv)
    checkpoint = Path(args.checkpoint)
    card = render(checkpoint, Path(args.run), Path(args.corpus), Path(args.speed))
    if args.refresh:
        card = refresh_sections((checkpoint / "README.md").read_text(), card, args.refresh)
    (checkpoint / "README.md").write_text(card)
    print(f"wrote {checkpoint / 'README.md'}")


if __name__ == "__main__":
    main()
