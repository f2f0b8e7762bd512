"""Data: find the files, read and check rows, detect the format, render with a chat template."""
