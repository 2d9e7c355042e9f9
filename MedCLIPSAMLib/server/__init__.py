"""The engine as a service: one process holds the models and runs jobs for local or remote clients.

``wire`` is the torch-free data format shared with ``MedCLIPSAMLib.client``; ``app`` (FastAPI),
``jobs`` (queue, progress, cancel), ``store`` (uploaded volumes) and ``engine`` (models) run in the
server process only.
"""
