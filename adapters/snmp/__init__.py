"""The SNMP adapter: the trap and inform receiver (`receiver`) and its BER fast path (`ber`)."""
