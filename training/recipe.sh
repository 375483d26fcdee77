#!/usr/bin/env bash
# The starter recipe, end to end on a CPU: corpus → whisper features → tokenizer → generator → refiner →
# checkpoints/teller-base → evaluation (lip sync; mouth size per portrait) → model card. One command:
#
#     bash training/recipe.sh
#
# Each step is skipped when its output exists (delete it, or the whole $RUN folder, to redo it), so an
# interrupted recipe resumes where it stopped. Step times go to $RUN/timings.tsv. Settings via environment:
#   HOURS (3.0) hours of speech in the corpus; WORKERS (2) processes making the corpus, the features and the
#   refiner's generated training motion; RUN (runs/starter); DATA (data); CHECKPOINT (checkpoints/teller-base);
#   *_STEPS training steps per part; GENERATOR_BATCH (16);
#   SPEED (a markdown file whose "## Speed" section the model card quotes; default: the project README).
set -euo pipefail
cd "$(dirname "$0")/.."

HOURS=${HOURS:-3.0}
WORKERS=${WORKERS:-2}
RUN=${RUN:-runs/starter}
DATA=${DATA:-data}
CHECKPOINT=${CHECKPOINT:-checkpoints/teller-base}
TOKENIZER_STEPS=${TOKENIZER_STEPS:-2000}
GENERATOR_STEPS=${GENERATOR_STEPS:-1500}
REFINER_STEPS=${REFINER_STEPS:-1500}
GENERATOR_BATCH=${GENERATOR_BATCH:-16}
export HF_HUB_OFFLINE=1

mkdir -p "$RUN"
LAUNCH=(accelerate launch --cpu --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no)

step() {  # step NAME OUTPUT COMMAND...: run COMMAND unless OUTPUT exists, and record its wall time
    local name=$1 output=$2
    shift 2
    if [ -e "$output" ]; then
        echo "== $name: $output exists, skipped"
        return
    fi
    echo "== $name"
    local start
    start=$(date +%s)
    "$@"
    printf '%s\t%s\n' "$name" "$(( $(date +%s) - start ))" >> "$RUN/timings.tsv"
}

step corpus "$DATA/corpus/summary.json" \
    python -m teller_recipe.corpus.build_corpus --output "$DATA/corpus" --hours "$HOURS" --workers "$WORKERS" \
    --cache-dir "$DATA/cache"
step features "$DATA/features/dataset_dict.json" \
    python training/precompute_features.py --corpus "$DATA/corpus" --checkpoint "$CHECKPOINT" \
    --output "$DATA/features" --workers "$WORKERS"
step tokenizer "$RUN/tokenizer/motion_tokenizer" \
    "${LAUNCH[@]}" training/train_tokenizer.py --features "$DATA/features" --output_dir "$RUN/tokenizer" \
    --max_train_steps "$TOKENIZER_STEPS" --train_batch_size 256 --resume_from_checkpoint latest
step generator "$RUN/generator/motion_generator" \
    "${LAUNCH[@]}" training/train_generator.py --features "$DATA/features" --tokenizer "$RUN/tokenizer/motion_tokenizer" \
    --output_dir "$RUN/generator" --max_train_steps "$GENERATOR_STEPS" --train_batch_size "$GENERATOR_BATCH" \
    --learning_rate 1e-3 --input_token_noise 0.3 --weight_decay 0.1 --resume_from_checkpoint latest
step refiner "$RUN/refiner/temporal_refiner" \
    "${LAUNCH[@]}" training/train_refiner.py --features "$DATA/features" --tokenizer "$RUN/tokenizer/motion_tokenizer" \
    --generator "$RUN/generator/motion_generator" --num_threads 1 --workers "$WORKERS" \
    --generated_cache "$RUN/samples" --output_dir "$RUN/refiner" --max_train_steps "$REFINER_STEPS" \
    --train_batch_size 64 --closure_gate_weight 1 --seed 1 --sample_seed 0 --resume_from_checkpoint latest
# (the closure gate and the seed: training/README.md, "A closure gate"; samples drawn with seed 0, as before)
# build_checkpoint reads the three trained parts from one folder.
mkdir -p "$RUN/trained"
for part in tokenizer/motion_tokenizer generator/motion_generator refiner/temporal_refiner; do
    ln -sfn "../$part" "$RUN/trained/$(basename "$part")"
done
step checkpoint "$RUN/checkpoint.done" \
    bash -c "python -m teller_recipe.conversion.build_checkpoint --output '$CHECKPOINT' --trained '$RUN/trained' && touch '$RUN/checkpoint.done'"
step evaluate "$RUN/eval/metrics.md" \
    python -m teller_recipe.evaluation.evaluate --checkpoint "$CHECKPOINT" --corpus "$DATA/corpus" --output "$RUN/eval"
# The astronaut's resting mouth is open; Grace Hopper's is closed: the same evaluation on her, shorter.
step evaluate_grace_hopper "$RUN/eval_grace/metrics.md" \
    python -m teller_recipe.evaluation.evaluate --checkpoint "$CHECKPOINT" --corpus "$DATA/corpus" --output "$RUN/eval_grace" \
    --portrait examples/grace_hopper.jpg --max-utterances 16
# What a viewer sees on every example portrait: how far the mouth opens, whether it closes, head motion.
step portraits "$RUN/portraits/metrics.md" \
    python -m teller_recipe.evaluation.portraits --checkpoint "$CHECKPOINT" --corpus "$DATA/corpus" \
    --output "$RUN/portraits"

# The model card reads the corpus summary, these step times, the evaluation tables and the README's Speed section.
python -m teller_recipe.model_card.model_card --checkpoint "$CHECKPOINT" --run "$RUN" --corpus "$DATA/corpus" \
    ${SPEED:+--speed "$SPEED"}

echo "== done; step times (s):"
cat "$RUN/timings.tsv"
awk -F'\t' '{t[$1] = $2} END {for (k in t) s += t[k]; printf "total %.1f min\n", s / 60}' "$RUN/timings.tsv"  # a step run again counts once
