-- An alert's severity: 'info' for a recorded decision someone should read (a challenger the
-- gates refused), 'warning' for what the monitoring flags, 'error' for a failed run. Rows
-- from before this column existed were monitoring alerts or failed runs: 'warning' for both.
ALTER TABLE alerts ADD COLUMN severity text NOT NULL DEFAULT 'warning'
    CHECK (severity IN ('info', 'warning', 'error'));
