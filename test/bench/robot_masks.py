"""Measurement (issue 17 §3): the masks a `run --bags` run learned from robot recordings that carry no masks,
against the synthetic generator's masks of the same frames.

    .venv/bin/python test/bench/robot_masks.py --run-dir runs/robot --source /work/robot-src/synth \
        [--masks instances|seeds] [--split val] [--split test]

The recordings are synthetic bags rewritten as a robot records them (test/robot_recordings.py), one per
generator sequence, each named `<anything>_<split>_<seq_NNNN>` after the sequence it came from (the split being
the generator's, not the run's), so `<source>/<split>/<seq_NNNN>` holds that sequence's masks, moving flags and
instance records. Frame t of an imported recording is frame t of that sequence (the importer keeps every frame
of a recording without gaps). Scores with `training.masks.evaluate` (`evaluate-masks`' IoU >= 0.5 matching, by
size, and pixel recall by motion) on every frame of the run's split that the mask stage wrote; prints the
markdown table per split. No training: seconds per split.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

NAME = re.compile(r'(?:^|_)(train|val|test)_(seq_\d+)$')


def source_sequence(name: str, source: Path) -> Path:
    """The generator's sequence folder a recording called `name` was made from; exits naming the rule if none."""
    m = NAME.search(name)
    folder = source / m.group(1) / m.group(2) if m else None
    if folder is None or not folder.is_dir():
        raise SystemExit(f'{name}: no generator sequence for it under {source} (recordings must be named '
                         f'<anything>_<split>_<seq_NNNN> after the sequence they were rewritten from)')
    return folder


def main(argv=None) -> int:
    from dynadepth_ros.datasets.synthetic import SyntheticSequence
    from training.config import load_config
    from training.masks.evaluate import MaskScores, masks_markdown, score_frame
    from training.stages import stage_dir
    from training.stages.outputs import LabelMaps

    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--run-dir', type=Path, required=True)
    ap.add_argument('--source', type=Path, required=True, help='the generator output the recordings were made from')
    ap.add_argument('--masks', default='instances', choices=('instances', 'seeds'))
    ap.add_argument('--split', action='append', help='the run\'s split(s) to score (default val and test)')
    ap.add_argument('--iou', type=float, default=0.5)
    args = ap.parse_args(argv)
    where = stage_dir(args.run_dir, args.masks)
    if not (where / 'manifest.json').is_file():
        raise SystemExit(f'{where} has no manifest.json: the {args.masks} stage has not finished in {args.run_dir}')
    gap = load_config(config_file=where / 'config.yaml').data.frame_gap
    maps = LabelMaps(where)
    for split in args.split or ['val', 'test']:
        scores = MaskScores()
        seq_dirs = sorted(p for p in (where / split).iterdir() if p.is_dir()) if (where / split).is_dir() else []
        for seq_dir in seq_dirs:
            gt_seq = SyntheticSequence(source_sequence(seq_dir.name, args.source))
            for png in sorted(seq_dir.glob('*.png')):
                score_frame(scores, maps.frame(split, seq_dir.name, int(png.stem)), gt_seq, int(png.stem), args.iou,
                            gap)
        if not scores.frames:
            print(f'{split}: no frame with {args.masks} masks in {where / split}')
            continue
        print(masks_markdown({'split': split, 'masks': args.masks, 'iou': args.iou, 'method': 'the run\'s',
                              **scores.summary()}))
    return 0


if __name__ == '__main__':
    sys.exit(main())
