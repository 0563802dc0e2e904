"""The configuration a run on recordings uses: the preset's budget, the recordings per split and their topics.

`plan_recordings(bags, preset, run_dir, ...)` surveys and checks the recordings (nothing is written), picks
the topics and splits them by time; `config_text(plan)` is the YAML `init` writes (and `run --bags` keeps in
the run directory): `extends: <preset>` plus the data section, loadable with `run --config`.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from training.config import load_config
from training.recordings import RecordingError
from training.recordings.checks import RecordingFacts, inspect_recording
from training.recordings.survey import TopicChoice, choose_topics, survey_bag
from training.recordings.time_split import TimeSplit, split_by_time

CONFIG_NAME = 'recordings.yaml'

LEARNED_OPTICAL_LABELLING = 0.7     # objects.labelling.optical_log_ratio written for recordings without masks
LEARNED_FLOATING_SEEDS = 0.6        # masks.seeds.floating_log_ratio written for recordings without masks
ODOMETRY_WEIGHT = 1.0               # scene.model.odometry_weight written for recordings with odometry


@dataclasses.dataclass
class RecordingsPlan:
    preset: str
    run_dir: Path
    bags: list[Path]
    topics: TopicChoice
    facts: list[RecordingFacts]
    split: TimeSplit
    data_root: Path

    @property
    def masks(self) -> str:
        """Where stage 2's instance masks come from: 'topic' (the recordings' mask topic) or 'learned' (none:
        the ground / seeds / instances stages learn them, objects.masks: learned)."""
        return 'topic' if self.topics.mask else 'learned'

    def data_section(self) -> dict:
        t = self.topics
        rosbag = {'bags': self.split.entries(), 'image_topic': t.image, 'camera_info_topic': t.camera_info,
                  'mask_topic': t.mask, 'odom_topic': t.odom, 'depth_topic': t.depth}
        return {'source': 'rosbag', 'root': str(self.data_root), 'train_split': 'train', 'val_split': 'val',
                'test_split': 'test', 'rosbag': rosbag}

    def config_tree(self) -> dict:
        tree = {'extends': self.preset, 'name': self.run_dir.name,
                'description': f'{self.preset} budget on {len(self.bags)} recording(s) '
                               f'({", ".join(b.name for b in self.bags)})',
                'data': self.data_section()}
        if self.topics.odom:
            # from random weights stage 1 can run its depth to max_depth in its first ~80 steps and never come back;
            # the odometry term at 1.0 (presets: 0.1) holds the pose, and with it the depth, from the start (cpu-small
            # on the same 47 recordings: seeds 0 and 1 collapsed at 0.1, seeds 0, 1 and 2 did not at 1.0; the whole
            # stage 1 at 1.0 converged, at 1.2x the AbsRel of the dataset folder's seed-0 stage 1 at 0.1; measured at
            # cpu-small only, written for every preset; --set scene.model.odometry_weight=... overrides it;
            # docs/training.md, "Stage 1 stops when its depth collapses")
            tree['scene'] = {'model': {'odometry_weight': ODOMETRY_WEIGHT}}
        if self.masks == 'learned':
            # learned masks are mostly moving objects that stage 1 explained away (no residual flow): the optical
            # cue labels them (cpu-small, docs/training.md: movers' pixels labelled dynamic 8.5 % -> 17.2 %, test
            # AbsRel on moving objects 1.04x -> 0.92x stage 1)
            tree['objects'] = {'masks': 'learned', 'labelling': {'optical_log_ratio': LEARNED_OPTICAL_LABELLING}}
            # learned masks stop short of a car's bottom: stage 3 reads its contact where the ground starts below it
            # (cpu-small train split: labelled movers' pseudo depth 1.17x -> 1.06x their true depth; docs/training.md)
            # and a near car whose lower body fills the rows below its mask has its contact out of view: the anchor
            # is only an upper bound there (cpu-small train: such cars' pseudo depth 1.59x -> 1.32x their depth; test
            # lead cars 0.97x / 0.89x stage 1 against 1.03x / 0.96x, two stage-4 seeds; docs/training.md)
            tree['dsa'] = {'extend_to_ground': True, 'bottom_edge': 'cap'}
            # a vehicle at the camera's speed has no flow for the optical cue; stage 1 puts it far behind where it
            # stands on the road, which the seeds read (cpu-small train: movers' pixels in a seed 0.146 -> 0.177 at
            # precision 0.77 -> 0.78; a fresh world's lead truck AbsRel 5.2 (stage 1) -> 4.5 without, 0.85 with;
            # docs/training.md)
            tree['masks'] = {'seeds': {'floating_log_ratio': LEARNED_FLOATING_SEEDS}}
        return tree


def plan_recordings(bags: list[str | Path], preset: str, run_dir: str | Path, *, image: str | None = None,
                    camera_info: str | None = None, odom: str | None = None, mask: str | None = None,
                    depth: str | None = None, lidar: str | None = None, no_odom: bool = False,
                    no_mask: bool = False, data_root: str | Path | None = None, val_fraction: float = 0.1,
                    test_fraction: float = 0.1) -> RecordingsPlan:
    """Survey, check and split the recordings; RecordingError (one line) for anything unusable. Writes nothing."""
    cfg = load_config(preset=preset)      # the preset exists, and its frame gap
    paths = [Path(b).resolve() for b in bags]
    for p in paths:
        if not p.exists():
            raise RecordingError(f'recording {p} does not exist: pass rosbag2 directories or .mcap/.db3 files')
    if len(set(p.resolve() for p in paths)) != len(paths):
        raise RecordingError('a recording is given twice in --bags; list each once')
    surveys = [survey_bag(p) for p in paths]
    topics = choose_topics(surveys, image=image, camera_info=camera_info, odom=odom, mask=mask, depth=depth,
                           lidar=lidar, no_odom=no_odom, no_mask=no_mask)
    facts = [inspect_recording(p, topics) for p in paths]
    sizes = {f.size for f in facts}
    if len(sizes) > 1:
        raise RecordingError('the recordings have different image sizes (' + ', '.join(
            f'{f.path}: {f.size[1]}x{f.size[0]}' for f in facts) + '); train on recordings of one camera setting')
    split = split_by_time(facts, val_fraction, test_fraction, cfg.data.frame_gap)
    run_dir = Path(run_dir)
    return RecordingsPlan(preset=preset, run_dir=run_dir, bags=paths, topics=topics, facts=facts, split=split,
                          data_root=Path(data_root) if data_root else run_dir / 'data')


def config_text(plan: RecordingsPlan) -> str:
    """The run's YAML config with comments saying where each choice came from."""
    t = plan.topics
    head = [
        f'# python -m training run --config {plan.run_dir / CONFIG_NAME} --run-dir {plan.run_dir}',
        f'# Written by `python -m training init` (or `run --bags`) from {len(plan.bags)} recording(s); edit it and run it with --config.',
        f'# Camera {t.image} ({"CompressedImage" if t.compressed else "Image"}) with {t.camera_info}; odometry '
        f'{t.odom or "none (relative depth)"}; instance masks {t.mask or "none (learned: objects.masks: learned)"}; ground truth '
        f'{t.depth or t.lidar or "none"}.',
        '# Split by time (`path@START-END` = seconds after the recording\'s first camera frame):',
        *[f'#   {line}' for line in plan.split.lines()],
    ]
    if t.lidar and not t.depth:
        head.append(f'# Lidar {t.lidar} is evaluated through dynadepth-eval-bag on the test recordings '
                    f'(the config has no lidar key).')
    body = yaml.safe_dump(plan.config_tree(), sort_keys=False, default_flow_style=False, width=110)
    return '\n'.join(head) + '\n' + body
