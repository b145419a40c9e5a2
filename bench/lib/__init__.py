"""Support code of the benchmarks in ``bench/`` (the entry scripts import it as ``lib``)."""
