"""Integration tests: the monitor's parts against real peers (the lab, sushy-tools, mosquitto, PostgreSQL,
net-snmp, ipmi_sim) started by the tests."""
