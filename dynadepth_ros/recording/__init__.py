"""Tools around rosbag2 recordings (numpy and rosbags; never torch):

    bag_reader.py        read mcap / sqlite3 bags, message → numpy helpers
    stamp_pairing.py     pair two message streams one-to-one by header stamp
    lidar_projection.py  PointCloud2 → sparse depth image in a camera (ground truth)
    eval_bag.py          `dynadepth-eval-bag` command line; the run is eval_run.run(EvalConfig):
      eval_config.py       the run's settings and input counts
      eval_plan.py         pass 1: stamps and pairing of a bag's topics
      eval_decode.py       pass 2: decoding the paired messages into frames
      eval_dataset.py      frames of a dataset folder instead of a bag
      evaluation.py        accumulating metrics per region, distance bin and frame
      eval_run.py          one run end to end, partial report on failure
      eval_report.py       report.json / report.md / frames.csv / PNG plots
    replay.py            `dynadepth-replay`: publish a bag with its timing, record topics
"""
