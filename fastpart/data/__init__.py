"""The dataset side: sources -> converted split files, read back whole.

``datasets`` is the registry (name -> reader, source files, paper settings); ``readers`` turn the
official archives or folders into in-memory splits (``arrays.SplitData``), reading their files
through ``sources`` (folders and archives, bounded reads, decoding); ``shapes`` and ``corruptions``
(built on ``imageops``) generate datasets; ``convert`` writes ``<out>/<name>/<split>.beton`` (or
``.npz``) plus ``manifest.json``; ``splitfiles`` writes and reads back a converted split and its manifest.
Nothing here knows about models, masks or training.
"""
