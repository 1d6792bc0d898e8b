"""The ``analyze`` CLI: figures and numbers from a running Glassbox server (see ``analysis.cli``).

Talks to the server only through ``serving.client.GlassboxClient`` and reads images with the numpy
readers of ``glassbox.data``; never imports torch.
"""
