"""Measurement (issues 17, 18): depth models on a synthetic world no run trained on, each next to the first (the
baseline, e.g. stage 1) in one run, through the node's inference core.

    .venv/bin/python test/bench/fresh_world.py --model stage1=runs/x/scene/scene.onnx \
        --model final=runs/x/final/final.onnx [--seed 9001] [--sequences 6] [--frames 50] [--out DIR]
    .venv/bin/python test/bench/fresh_world.py --split-dir data/synthetic/cpu-small/test --model ...

Renders a test split with `dynadepth-synth --split test --seed SEED` into --out (default
/tmp/dynadepth-fresh-<seed>; reused when it is there with the same settings), then runs every model on every
frame of every sequence with dynadepth_ros.model_comparison.compare_on_sequence (ONNX Runtime, the node's pre-
and post-processing at the models' own resolution) and pools the per-frame Eigen metrics over the sequences.
Prints per region (all / static / dynamic / lead; dynamic = the generator's moving instances) AbsRel metric /
median-scaled per model and its ratio to the baseline, and the median over frames of median(GT) /
median(prediction) (1 = the right metric scale; > 1 = the scene seen nearer than it is).
--split-dir scores the sequence folders of an existing split instead (nothing rendered), e.g. the synthetic test
split, to put models trained on other data (a `run --bags` run on robot recordings) next to the dataset's runs.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

REGIONS = ('all', 'static', 'dynamic', 'lead')
MODES = ('metric', 'median_scaled')


def render(out: Path, seed: int, sequences: int, frames: int) -> list[Path]:
    """The sequence folders of the fresh test split, rendered unless already there with these settings."""
    stamp = out / 'fresh_world.json'
    settings = {'seed': seed, 'sequences': sequences, 'frames': frames}
    if not (stamp.is_file() and json.loads(stamp.read_text()) == settings):
        subprocess.run([str(Path(sys.executable).parent / 'dynadepth-synth'), '--out', str(out), '--split', 'test',
                        '--seed', str(seed), '--sequences', str(sequences), '--frames', str(frames), '--overwrite'],
                       check=True)
        stamp.write_text(json.dumps(settings))
    return sorted(p for p in (out / 'test').iterdir() if p.is_dir())


def pool(per_sequence: list[dict]) -> dict:
    """{mode: {region: (mean AbsRel over frames, frames)}} and 'scale' (median GT/pred over sequences' medians
    weighted by frames) from compare_on_sequence summaries of one model."""
    out: dict = {mode: {} for mode in MODES}
    for mode in MODES:
        for region in REGIONS:
            parts = [(s[mode][region]['abs_rel'], s[mode][region]['frames']) for s in per_sequence
                     if s[mode].get(region)]
            n = sum(f for _, f in parts)
            if n:
                out[mode][region] = (sum(a * f for a, f in parts) / n, n)
    scales = [(s['scale']['median_gt_over_pred'], s['scale']['frames']) for s in per_sequence
              if s['scale']['median_gt_over_pred'] is not None]
    out['scale'] = sum(v * f for v, f in scales) / max(1, sum(f for _, f in scales))
    return out


def main(argv=None) -> int:
    from dynadepth_ros.model_comparison import compare_on_sequence
    from moving_error import model_paths

    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--model', action='append', required=True, metavar='LABEL=PATH',
                    help='the first is the baseline the others are divided by')
    ap.add_argument('--seed', type=int, default=9001)
    ap.add_argument('--sequences', type=int, default=6)
    ap.add_argument('--frames', type=int, default=50)
    ap.add_argument('--out', type=Path, default=None)
    ap.add_argument('--split-dir', type=Path, default=None,
                    help='score the sequence folders of this split (e.g. data/synthetic/cpu-small/test); no rendering')
    args = ap.parse_args(argv)
    models = model_paths(args.model)
    if args.split_dir is not None:
        out = args.split_dir
        seqs = sorted(p for p in out.iterdir() if (p / 'rgb').is_dir()) if out.is_dir() else []
        if not seqs:
            raise SystemExit(f'--split-dir {out}: no sequence folders (<seq>/rgb) in it')
    else:
        out = args.out or Path(f'/tmp/dynadepth-fresh-{args.seed}')
        seqs = render(out, args.seed, args.sequences, args.frames)
    per_model: dict[str, list[dict]] = {name: [] for name in models}
    for seq in seqs:
        cmp = compare_on_sequence(seq, models, strip_rows=0)
        for name in models:
            per_model[name].append(cmp['models'][name]['summary'])
    pooled = {name: pool(s) for name, s in per_model.items()}
    base = next(iter(models))
    frames = pooled[base]['metric']['all'][1]
    what = f'split {out}' if args.split_dir is not None else f'fresh world: seed {args.seed} ({out})'
    print(f'{what}, {len(seqs)} sequences, {frames} frames; AbsRel metric / '
          f'median-scaled, mean over frames; ratio to {base}')
    print('| region | frames | ' + ' | '.join(models) + ' | ' +
          ' | '.join(f'{n} / {base}' for n in list(models)[1:]) + ' |')
    print('|---' * (2 + 2 * len(models) - 1) + '|')
    for region in REGIONS:
        if region not in pooled[base]['metric']:
            continue
        cells, ratios = [], []
        for name in models:
            m, s = pooled[name]['metric'][region][0], pooled[name]['median_scaled'][region][0]
            cells.append(f'{m:.3f} / {s:.3f}')
            if name != base:
                bm, bs = pooled[base]['metric'][region][0], pooled[base]['median_scaled'][region][0]
                ratios.append(f'{m / bm:.2f} / {s / bs:.2f}')
        print(f'| {region} | {pooled[base]["metric"][region][1]} | ' + ' | '.join(cells + ratios) + ' |')
    print('median GT / prediction: ' + ', '.join(f'{n} {p["scale"]:.3f}' for n, p in pooled.items()))
    return 0


if __name__ == '__main__':
    sys.exit(main())
