"""Training data: typed config, on-first-use preparation, triplet datasets, augmentation, rosbag import.

    from training.data import DataConfig, build_dataset
    ds = build_dataset(DataConfig(root='data/synthetic'), 'train', augment=True)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True)))
"""
from training.data.augment import AugmentConfig
from training.data.build import build_dataset, open_split
from training.data.config import DataConfig, KittiConfig, RosbagConfig, SyntheticConfig
from training.data.prepare import prepare_data
from training.data.triplets import TripletDataset

__all__ = ['AugmentConfig', 'DataConfig', 'KittiConfig', 'RosbagConfig', 'SyntheticConfig', 'TripletDataset',
           'build_dataset', 'open_split', 'prepare_data']
