"""Prometheus remote write 1.0 messages (`prometheus.WriteRequest` and what it holds).

The messages of the remote-write 1.0 specification (prompb/remote.proto and types.proto), the
subset a sender writes, declared with the protobuf library's descriptor API in a private pool:

    message WriteRequest   { repeated TimeSeries timeseries = 1; reserved 2;
                             repeated MetricMetadata metadata = 3; }
    message TimeSeries     { repeated Label labels = 1; repeated Sample samples = 2; }
    message Label          { string name = 1; string value = 2; }
    message Sample         { double value = 1; int64 timestamp = 2; }   // ms since the epoch
    message MetricMetadata { MetricType type = 1; string metric_family_name = 2;
                             string help = 4; string unit = 5; }

Why not a package: the kept remote-write protobuf on PyPI (inside
opentelemetry-exporter-prometheus-remote-write) pins protobuf below the version this project runs,
and pulls in the OpenTelemetry SDK and requests; generated code (protoc) would tie the module to one
protobuf runtime. These twenty lines make the same wire messages on every protobuf >= 4.21, and the
tests prove them against a real Prometheus' remote-write receiver.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto
METRIC_TYPES = ["UNKNOWN", "COUNTER", "GAUGE", "HISTOGRAM", "GAUGEHISTOGRAM", "SUMMARY", "INFO", "STATESET"]


def _file() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(name="edge_gateway/prompb.proto", package="prometheus", syntax="proto3")

    def message(name: str, *fields: tuple) -> None:
        msg = proto.message_type.add(name=name)
        for field_name, number, type_, label, type_name in fields:
            field = msg.field.add(name=field_name, number=number, type=type_, label=label)
            if type_name:
                field.type_name = ".prometheus." + type_name

    one, many = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
    message("Sample", ("value", 1, _F.TYPE_DOUBLE, one, ""), ("timestamp", 2, _F.TYPE_INT64, one, ""))
    message("Label", ("name", 1, _F.TYPE_STRING, one, ""), ("value", 2, _F.TYPE_STRING, one, ""))
    message("TimeSeries", ("labels", 1, _F.TYPE_MESSAGE, many, "Label"), ("samples", 2, _F.TYPE_MESSAGE, many, "Sample"))
    message("MetricMetadata", ("type", 1, _F.TYPE_ENUM, one, "MetricMetadata.MetricType"),
            ("metric_family_name", 2, _F.TYPE_STRING, one, ""), ("help", 4, _F.TYPE_STRING, one, ""),
            ("unit", 5, _F.TYPE_STRING, one, ""))
    enum = proto.message_type[-1].enum_type.add(name="MetricType")
    for number, name in enumerate(METRIC_TYPES):
        enum.value.add(name=name, number=number)
    message("WriteRequest", ("timeseries", 1, _F.TYPE_MESSAGE, many, "TimeSeries"),
            ("metadata", 3, _F.TYPE_MESSAGE, many, "MetricMetadata"))
    proto.message_type[-1].reserved_range.add(start=2, end=3)
    return proto


_pool = descriptor_pool.DescriptorPool()
_pool.Add(_file())


def _class(name: str) -> type:
    descriptor = _pool.FindMessageTypeByName("prometheus." + name)
    if hasattr(message_factory, "GetMessageClass"):
        return message_factory.GetMessageClass(descriptor)
    return message_factory.MessageFactory(_pool).GetPrototype(descriptor)  # protobuf < 4.22


WriteRequest = _class("WriteRequest")
TimeSeries = _class("TimeSeries")
MetricMetadata = _class("MetricMetadata")
