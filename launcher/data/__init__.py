"""Data: find the files and read them (files.py), detect and normalise the row format (formats.py), check every
row at preflight (load.py), render with a chat template (templates.py), encode rows into token ids and loss
labels (encode.py), and truncate, pack and cache the processed datasets (processed.py)."""
