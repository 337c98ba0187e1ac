"""Parts of the QoS benchmark (perf/qos_bench.py): a disk model and a load process."""
