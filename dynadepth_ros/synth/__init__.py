"""Synthetic dynamic driving scenes with exact ground truth (design section 6).

    from dynadepth_ros.synth import generate_split
    seq_dirs = generate_split('data/synth', 'train', sequences=20, frames=100, height=192, width=640, seed=0)

Command line: `dynadepth-synth --out DIR --split train --sequences N --frames M --height H --width W --seed S [--bag]`.
"""
from .generate import FPS, SynthParams, generate_sequence, generate_split, has_lead_car, sequence_seed

__all__ = ['FPS', 'SynthParams', 'generate_sequence', 'generate_split', 'has_lead_car', 'sequence_seed']
