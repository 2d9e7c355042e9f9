"""The engine as a service: one process holds the models and runs jobs for local or remote clients.

The torch-free data format it shares with ``MedCLIPSAMLib.client`` is ``MedCLIPSAMLib.wire``, below both; ``app`` (FastAPI),
``jobs`` (queue, progress, cancel), ``store`` (uploaded volumes) and ``engine`` (models) run in the
server process only.
"""
