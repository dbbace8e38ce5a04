"""LightningDataModules for the offline default data and the paper's datasets."""
