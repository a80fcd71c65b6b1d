"""Domain packages: backbones, datasets and tasks of one field each, registered with zoo.

Each subpackage has ``backbones.py`` (registered backbones: pretrained source, tiny
config, structure description for zoo.peft), ``data.py`` (registered datasets: canonical
URL + sha256, local layout, synthetic fixture) and ``tasks.py`` (the field's metrics).
"""
