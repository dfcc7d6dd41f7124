"""Jobs, schedules, the CLI, and the ``Definitions`` that ``workspace.yaml`` loads."""
