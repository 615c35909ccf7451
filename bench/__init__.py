"""fastft benchmark suite: ``python -m bench`` runs every ``bench/bench_<part>.py`` that fits the device.

See bench/README.md. The shared machinery (timing, peak memory, records, output) is in
:mod:`bench.common`.
"""
