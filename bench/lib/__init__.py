"""Support code of the benchmarks in ``bench/`` (the entry scripts import it as ``lib``)."""

#: The format generation stored results are keyed by. Format 6 only added overflow lists, which
#: a config asks for (`CodecConfig.overflow`, then part of its settings); every other blob is
#: written as in format 5, byte for byte, so the results measured then still hold.
RESULTS_FORMAT = 5
