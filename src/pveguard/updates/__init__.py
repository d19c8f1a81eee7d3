"""Safe updates of the managed containers: pending packages, snapshot, upgrade, checks, rollback."""
