#!/usr/bin/env bash
# Reproduce a published table: run its preset (a sweep) and print our numbers beside the published ones.
#
#   scripts/reproduce.sh NAME [extra overrides...]     NAME: protaugment_protonet | fsic_nonames | fsic_best |
#                                                       fsic_frozen | intentbert_protocol | mteb_banking77 |
#                                                       fewrel2_da, clinc_oos (need METARUN_DATA_DIR=../shared/data)
#   scripts/reproduce.sh protaugment_protonet trainer=gpu       # e.g. the GPU schedule
#
# It first says how many runs it starts and about how long they take. Runs land in outputs/reproduce/NAME
# (METARUN_REPRO_DIR to change), with table.md / .csv / .tex and table_vs_published.md. A relaunch after a crash skips
# finished jobs and resumes the others, so the script can simply be started again. The comparison is
# printed and written to outputs/reproduce/NAME/table_vs_published.md (published numbers:
# scripts/published/NAME.yaml; the presets: configs/experiment/NAME.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."

names="protaugment_protonet fsic_nonames fsic_best fsic_frozen intentbert_protocol mteb_banking77 fewrel2_da clinc_oos"
name=${1:-}
if [[ -z "$name" || " $names " != *" $name "* ]]; then
  echo "usage: scripts/reproduce.sh NAME [overrides...]; NAME is one of: ${names// /, }" >&2
  exit 2
fi
shift
out=${METARUN_REPRO_DIR:-outputs/reproduce}/$name

# runs and an estimate of their time on an idle 2-core CPU (measured: docs/benchmarks.md, docs/fewrel.md)
case $name in
  protaugment_protonet|fsic_nonames|fsic_best)
    runs="30 runs (5 class splits x 3 datasets x 2 data profiles), about 2 hours"
    sweep=(data.split=1,2,3,4,5 data=banking77,hwu64,clinc150 data.train_per_class=10,null) ;;
  fsic_frozen)
    runs="15 runs (5 class splits x 3 datasets; no training), about 15 minutes"
    sweep=(data.split=1,2,3,4,5 data=banking77,hwu64,clinc150) ;;
  intentbert_protocol)
    runs="4 runs (frozen and pre-trained encoder x 2 targets), about 15 minutes"
    sweep=(trainer.max_steps=0,300 data@eval.test.data=banking77,hwu64) ;;
  mteb_banking77)
    runs="1 run, about 2 minutes"
    sweep=() ;;
  fewrel2_da)            # without adaptation, then with objective=adversarial (two sweep folders)
    runs="2 runs (without and with objective=adversarial), about 30 minutes"
    echo "reproduce.sh $name: $runs on a 2-core CPU; results in $out (table.md, table_vs_published.md)" >&2
    metarun -m "experiment=$name" "hydra.sweep.dir=$out/none" "$@"
    sweep=(objective=adversarial)
    out_sweep=$out/adversarial ;;
  clinc_oos)             # every score and rule at 5 / 10 per intent, oos_train as a class, and the full data
    echo "reproduce.sh $name: 29 runs (5 scores x 3 rules and oos_train as a class at 5 and 10 per intent; 4 \
threshold runs and oos_train at 100 per intent; threshold and oos_train at 25 per intent in the small, imbalanced and \
oos_plus data conditions: frozen MiniLM, about 5 minutes, features cached after the first run; then MiniLM fine-tuned \
on all 15,000 utterances, 2 rules, about 9 minutes each) on a 2-core CPU; results in $out (table_vs_published.md)" >&2
    metarun -m "experiment=$name" eval.test.oos_score=maxprob,energy,margin,mahalanobis,knn \
      eval.test.threshold_rule=accuracy,balanced,recall eval.test.reject_target=0.6 "hydra.sweep.dir=$out/scores" "$@"
    metarun -m "experiment=$name" eval.test.reject=oos_class "hydra.sweep.dir=$out/oos_class" "$@"
    metarun -m "experiment=$name" 'eval.test.shots=[100]' eval.test.draws=1 eval.test.oos_score=maxprob,mahalanobis \
      eval.test.threshold_rule=accuracy,balanced "hydra.sweep.dir=$out/full" "$@"
    metarun -m "experiment=$name" 'eval.test.shots=[100]' eval.test.draws=1 eval.test.reject=oos_class \
      "hydra.sweep.dir=$out/full_oos_class" "$@"
    metarun -m "experiment=$name" data.condition=small,imbalanced,oos_plus 'eval.test.shots=[25]' eval.test.draws=1 \
      eval.test.reject=threshold,oos_class "hydra.sweep.dir=$out/conditions" "$@"
    # Larson et al.'s full-data row with a fine-tuned encoder: 3 epochs of 15,000 utterances in batches of 32
    metarun -m "experiment=$name" eval.test.head=finetune 'eval.test.shots=[100]' eval.test.draws=1 \
      eval.test.finetune.epochs=3 eval.test.finetune.batch_size=32 eval.test.threshold_rule=accuracy,recall \
      eval.test.reject_target=0.6 "hydra.sweep.dir=$out/full_finetuned" "$@"
    python scripts/oos_table.py "$out" --published scripts/published/clinc_oos.yaml --out "$out/table_vs_published.md"
    exit 0 ;;
esac

[[ $name == fewrel2_da ]] || echo "reproduce.sh $name: $runs on a 2-core CPU; results in $out (table.md, \
table_vs_published.md)" >&2
metarun -m "experiment=$name" "${sweep[@]}" "hydra.sweep.dir=${out_sweep:-$out}" "$@"
metarun-table "$out" --out "$out" --published "scripts/published/$name.yaml"
