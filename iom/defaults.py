"""Names of the shipped defaults (no imports: cheap for command lines to read)."""

#: the shipped hasher (``models/<name>``) of run_me.py, the template service and the CLI; its
#: ``stage1_model`` (``mobilefacenet_ms1m``) is the default stage-1 model
DEFAULT_HASHER = "iom_mobilefacenet_ms1m_512x8"
