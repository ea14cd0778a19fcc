"""Sensor ingest (数据接入): payload parsing, the batch pipeline, the MQTT consumer."""
