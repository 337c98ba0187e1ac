"""sbstore: software-defined NVMe/TCP block storage."""
__version__ = "0.1.0"
