"""The data pipeline: unified rows (``schema``), dataset formats and loaders (``formats``,
``loaders``, ``jsonl``), chat templating and loss masks (``templating``), mixed
SFT/preference sampling (``sampler``), sequence packing (``packing``), the run's data bundle
(``pipeline``) and the embedded toy task (``toy_task``, ``tiny_tokenizer``).

Import from the submodules; this package imports nothing, so reading the config section
(``data.config``) does not pull in ``datasets``, ``transformers`` or ``torch``.
"""
