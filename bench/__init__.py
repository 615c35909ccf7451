"""fastft benchmark suite: ``python -m bench`` runs every ``bench/bench_<part>.py`` that fits the device.

See bench/README.md. The shared machinery: timing and peak memory in
:mod:`bench.common`, records and result files in :mod:`bench.records`, a part's command line in
:mod:`bench.cli`.
"""
