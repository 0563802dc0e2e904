"""Instance masks learned from the data when a recording has none (the reference's fully unsupervised
variant, research/reference-pipeline.md §3U), as numpy cores the three mask stages share:

    seeds.py         the moving regions of a frame (stage-1 residual flow) grouped into objects, and the
                     reference's seed rules (not ground, touching the ground, compact, not tiny or huge)
    postprocess.py   the self-training's mask post-processing (compactness, overlaps, road, size)
    evaluate.py      learned masks against a dataset's own masks: recall / precision of moving objects at
                     IoU >= 0.5 by object size (`python -m training evaluate-masks`)

The networks are in training/networks (ground_net, instance_net, slot_attention), the stages in
training/stages (mask_ground, mask_seeds, mask_instances), the decoding of the instance network's
outputs in dynadepth_ros/instance_masks.py (numpy, so the node can run the exported model too).
"""
