"""Rule policy: which events mean fail over, alert or ignore; the guards that protect the datacenter
from the rules themselves; the built-in rule packs (YAML data in rules/packs/)."""
