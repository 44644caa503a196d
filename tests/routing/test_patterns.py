"""EventPattern: the examples of the EventBridge documentation, edge cases, validation.

Doc-example tests are named ``test_doc_<page or section>_<example>``; their events
and patterns are the documented ones, re-typed as Python data.
"""

from __future__ import annotations

import copy
import pickle
from typing import Any

import pytest

from cqrs_kit.errors import PatternError
from cqrs_kit.routing import EventPattern


def matches(pattern: dict[str, Any] | str, event: dict[str, Any]) -> bool:
    return EventPattern.parse(pattern).matches(event)


EC2_TERMINATED: dict[str, Any] = {
    "version": "0",
    "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718",
    "detail-type": "EC2 Instance State-change Notification",
    "source": "aws.ec2",
    "account": "111122223333",
    "time": "2017-12-22T18:43:48Z",
    "region": "us-west-1",
    "resources": ["arn:aws:ec2:us-west-1:123456789012:instance/i-1234567890abcdef0"],
    "detail": {"instance-id": "i-1234567890abcdef0", "state": "terminated"},
}

AUTOSCALING_LAUNCH: dict[str, Any] = {
    "version": "0",
    "id": "3e3c153a-8339-4e30-8c35-687ebef853fe",
    "detail-type": "EC2 Instance Launch Successful",
    "source": "aws.autoscaling",
    "account": "123456789012",
    "time": "2015-11-11T21:31:47Z",
    "region": "us-east-1",
    "resources": [],
    "detail": {"eventVersion": "", "responseElements": None},
}

# The sample event the content-filtering examples are written against.
EC2_RUNNING: dict[str, Any] = {
    "version": "0",
    "id": "ddddd4-aaaa-7777-4444-345dd43cc333",
    "detail-type": "EC2 Instance State-change Notification",
    "source": "aws.ec2",
    "account": "012345679012",
    "time": "2017-10-02T16:24:49Z",
    "region": "us-east-1",
    "resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-000000aaaaaa00000"],
    "detail": {
        "c-count": 5,
        "d-count": 3,
        "x-limit": 301.8,
        "source-ip": "10.0.0.33",
        "instance-id": "i-000000aaaaaa00000",
        "state": "running",
    },
}


def with_detail(**fields: Any) -> dict[str, Any]:
    event = copy.deepcopy(EC2_RUNNING)
    event["detail"].update(fields)
    return event


# ---------------------------------------------------------------- event patterns


def test_doc_event_patterns_ec2_instance_termination() -> None:
    pattern = {
        "source": ["aws.ec2"],
        "detail-type": ["EC2 Instance State-change Notification"],
        "detail": {"state": ["terminated"]},
    }
    assert matches(pattern, EC2_TERMINATED)
    assert not matches(pattern, {**EC2_TERMINATED, "detail": {"state": "running"}})
    assert not matches(pattern, {**EC2_TERMINATED, "source": "aws.fargate"})


def test_doc_event_patterns_fields_must_appear_with_the_same_nesting() -> None:
    pattern = {"detail": {"state": ["terminated"]}}
    assert not matches(pattern, {"state": "terminated"})
    assert not matches(pattern, {"detail": "terminated"})


def test_doc_match_values_ec2_or_fargate() -> None:
    pattern = {"source": ["aws.ec2", "aws.fargate"]}
    assert matches(pattern, {"source": "aws.ec2"})
    assert matches(pattern, {"source": "aws.fargate"})
    assert not matches(pattern, {"source": "aws.ecs"})


def test_doc_example_events_field_matching_null_response_elements() -> None:
    pattern = {
        "source": ["aws.autoscaling"],
        "detail-type": ["EC2 Instance Launch Successful"],
        "detail": {"responseElements": [None]},
    }
    assert matches(pattern, AUTOSCALING_LAUNCH)


def test_doc_example_events_value_matching_macie_risk() -> None:
    event: dict[str, Any] = {
        "version": "0",
        "id": "3e355723-fca9-4de3-9fd7-154c289d6b59",
        "detail-type": "Macie Alert",
        "source": "aws.macie",
        "account": "123456789012",
        "time": "2017-04-24T22:28:49Z",
        "region": "us-east-1",
        "resources": [
            "arn:aws:macie:us-east-1:123456789012:trigger/trigger_id/alert/alert_id",
            "arn:aws:macie:us-east-1:123456789012:trigger/trigger_id",
        ],
        "detail": {
            "notification-type": "ALERT_CREATED",
            "name": "Scanning bucket policies",
            "tags": ["Custom_Alert", "Insider"],
            "risk-score": 80,
            "trigger": {"alert-type": "basic", "risk": 8},
        },
    }
    pattern = {
        "source": ["aws.macie"],
        "detail-type": ["Macie Alert"],
        "detail": {"risk-score": [80], "trigger": {"risk": [8]}},
    }
    assert matches(pattern, event)
    event["detail"]["trigger"]["risk"] = 7
    assert not matches(pattern, event)


def test_doc_considerations_numbers_match_by_string_representation() -> None:
    # "300, 300.0, and 3.0e2 are not considered equal".
    assert matches({"n": [300]}, {"n": 300})
    assert not matches({"n": [300]}, {"n": 300.0})
    assert not matches({"n": [300.0]}, {"n": 300})
    assert matches('{"n": [3.0e2]}', {"n": 300.0})


def test_doc_considerations_strings_match_exactly_without_case_folding() -> None:
    assert not matches({"source": ["aws.ec2"]}, {"source": "AWS.EC2"})
    assert not matches({"source": ["aws.ec2"]}, {"source": "aws.ec2 "})


def test_doc_considerations_duplicate_fields_last_one_wins() -> None:
    pattern = """{
      "detail": {
        "location": [ { "prefix": "us-" } ],
        "location": [ { "anything-but": "us-east" } ]
      }
    }"""
    assert matches(pattern, {"detail": {"location": "eu-west"}})
    assert not matches(pattern, {"detail": {"location": "us-east"}})


# ------------------------------------------------------ null values, empty strings


def test_doc_null_values_and_empty_strings_empty_event_version() -> None:
    assert matches({"detail": {"eventVersion": [""]}}, AUTOSCALING_LAUNCH)


def test_doc_null_values_and_empty_strings_null_response_elements() -> None:
    assert matches({"detail": {"responseElements": [None]}}, AUTOSCALING_LAUNCH)


def test_doc_null_values_and_empty_strings_are_not_interchangeable() -> None:
    assert not matches({"detail": {"eventVersion": [None]}}, AUTOSCALING_LAUNCH)
    assert not matches({"detail": {"responseElements": [""]}}, AUTOSCALING_LAUNCH)


def test_null_does_not_match_a_missing_field() -> None:
    assert not matches({"detail": {"missing": [None]}}, AUTOSCALING_LAUNCH)
    assert not matches({"detail": {"missing": [""]}}, AUTOSCALING_LAUNCH)


# ----------------------------------------------------------------------- arrays


def test_doc_arrays_intersection_with_event_array() -> None:
    pattern = {
        "resources": [
            "arn:aws:ec2:us-east-1:123456789012:instance/i-b188560f",
            "arn:aws:ec2:us-east-1:111122223333:instance/i-b188560f",
            "arn:aws:ec2:us-east-1:444455556666:instance/i-b188560f",
        ]
    }
    event = {
        "resources": [
            "arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:eb56d16b-bbf0-401d-"
            "b893-d5978ed4a025:autoScalingGroupName/ASGTerminate",
            "arn:aws:ec2:us-east-1:123456789012:instance/i-b188560f",
        ]
    }
    assert matches(pattern, event)
    assert not matches(pattern, {"resources": event["resources"][:1]})
    assert not matches(pattern, {"resources": []})


def test_arrays_of_objects_match_element_by_element() -> None:
    event = {
        "employees": [
            {"firstName": "John", "lastName": "Doe"},
            {"firstName": "Anna", "lastName": "Smith"},
            {"firstName": "Peter", "lastName": "Jones"},
        ]
    }
    assert matches({"employees": {"firstName": ["Anna"]}}, event)
    # Both fields must hold in the same element: Anna is a Smith, not a Jones.
    assert not matches({"employees": {"firstName": ["Anna"], "lastName": ["Jones"]}}, event)
    assert matches({"employees": {"firstName": ["Anna"], "lastName": ["Smith"]}}, event)


def test_absence_below_an_array_of_objects_means_absent_from_every_element() -> None:
    event = {"a": [{"b": 1}, {"c": 2}]}
    # a.b is in the event (first element), so it does not "not exist".
    assert not matches({"a": {"b": [{"exists": False}]}}, event)
    assert matches({"a": {"b": [{"exists": True}]}}, event)
    assert not matches({"a": {"c": [2], "b": [{"exists": False}]}}, event)
    assert matches({"a": {"c": [2], "d": [{"exists": False}]}}, event)
    deeper = {"a": [{"b": {"c": 1}}, {"b": "x"}]}
    assert not matches({"a": {"b": {"c": [{"exists": False}]}}}, deeper)
    assert matches({"a": {"b": {"c": [{"exists": True}]}}}, deeper)


def test_nested_arrays_are_flattened() -> None:
    event = {"employees": [[{"firstName": "John"}], [{"firstName": "Peter"}]], "tags": [["a"], "b"]}
    assert matches({"employees": {"firstName": ["Peter"]}}, event)
    assert matches({"tags": ["a"]}, event)


# ---------------------------------------------------------- prefix and suffix


def test_doc_prefix_matching_time() -> None:
    pattern = {"time": [{"prefix": "2017-10-02"}]}
    assert matches(pattern, {"time": "2017-10-02T18:43:48Z"})
    assert not matches(pattern, {"time": "2017-10-03T18:43:48Z"})


def test_doc_prefix_matching_ignoring_case_service() -> None:
    pattern = {"detail": {"service": [{"prefix": {"equals-ignore-case": "EventB"}}]}}
    for service in ("EventBridge", "EVENTBRIDGE", "eventbus", "eVeNtB"):
        assert matches(pattern, {"detail": {"service": service}}), service
    assert not matches(pattern, {"detail": {"service": "Event"}})


def test_doc_suffix_matching_file_name() -> None:
    pattern = {"FileName": [{"suffix": ".png"}]}
    assert matches(pattern, {"FileName": "image.png"})
    assert not matches(pattern, {"FileName": "image.PNG"})
    assert not matches(pattern, {"FileName": "image.png.txt"})


def test_doc_suffix_matching_ignoring_case_file_name() -> None:
    pattern = {"detail": {"FileName": [{"suffix": {"equals-ignore-case": ".png"}}]}}
    assert matches(pattern, {"detail": {"FileName": "image.png"}})
    assert matches(pattern, {"detail": {"FileName": "image.PNG"}})
    assert not matches(pattern, {"detail": {"FileName": "image.jpg"}})


def test_prefix_and_suffix_only_match_strings() -> None:
    assert not matches({"n": [{"prefix": "1"}]}, {"n": 12})
    assert not matches({"n": [{"suffix": "e"}]}, {"n": True})
    assert not matches({"n": [{"prefix": ""}]}, {"n": None})


# -------------------------------------------------------------- anything-but


def test_doc_anything_but_matching_string() -> None:
    pattern = {"detail": {"state": [{"anything-but": "initializing"}]}}
    assert matches(pattern, EC2_RUNNING)
    assert not matches(pattern, with_detail(state="initializing"))


def test_doc_anything_but_matching_number() -> None:
    pattern = {"detail": {"x-limit": [{"anything-but": 123}]}}
    assert matches(pattern, EC2_RUNNING)
    assert not matches(pattern, with_detail(**{"x-limit": 123}))


def test_doc_anything_but_matching_list_of_strings() -> None:
    pattern = {"detail": {"state": [{"anything-but": ["stopped", "overloaded"]}]}}
    assert matches(pattern, EC2_RUNNING)
    assert not matches(pattern, with_detail(state="stopped"))
    assert not matches(pattern, with_detail(state="overloaded"))


def test_doc_anything_but_matching_list_of_numbers() -> None:
    pattern = {"detail": {"x-limit": [{"anything-but": [100, 200, 300]}]}}
    assert matches(pattern, EC2_RUNNING)
    assert not matches(pattern, with_detail(**{"x-limit": 200}))


def test_doc_anything_but_matching_prefix() -> None:
    pattern = {"detail": {"state": [{"anything-but": {"prefix": "init"}}]}}
    assert matches(pattern, EC2_RUNNING)
    assert not matches(pattern, with_detail(state="initializing"))


def test_doc_anything_but_matching_suffix() -> None:
    pattern = {"FileName": [{"anything-but": {"suffix": ".png"}}]}
    assert matches(pattern, {"FileName": "notes.txt"})
    assert not matches(pattern, {"FileName": "image.png"})


def test_doc_anything_but_matching_ignoring_case() -> None:
    pattern = {"state": [{"anything-but": {"equals-ignore-case": "initializing"}}]}
    assert matches(pattern, {"state": "running"})
    assert not matches(pattern, {"state": "INITIALIZING"})
    assert not matches(pattern, {"state": "Initializing"})
    listed = {"state": [{"anything-but": {"equals-ignore-case": ["initializing", "stopped"]}}]}
    assert not matches(listed, {"state": "STOPPED"})
    assert matches(listed, {"state": "running"})


def test_doc_anything_but_matching_wildcard() -> None:
    pattern = {"FilePath": [{"anything-but": {"wildcard": "*/lib/*"}}]}
    assert matches(pattern, {"FilePath": "/usr/bin/env"})
    assert not matches(pattern, {"FilePath": "/usr/lib/libc.so"})
    listed = {"FilePath": [{"anything-but": {"wildcard": ["*/lib/*", "*/bin/*"]}}]}
    assert not matches(listed, {"FilePath": "/usr/bin/env"})
    assert matches(listed, {"FilePath": "/etc/hosts"})


def test_anything_but_needs_the_field_to_exist() -> None:
    assert not matches({"state": [{"anything-but": "initializing"}]}, {"other": 1})
    assert not matches({"state": [{"anything-but": {"prefix": "x"}}]}, {"state": {"x": 1}})
    assert not matches({"state": [{"anything-but": "x"}]}, {"state": []})


def test_anything_but_on_an_array_matches_if_any_element_is_not_excluded() -> None:
    pattern = {"tags": [{"anything-but": ["a"]}]}
    assert matches(pattern, {"tags": ["a", "b"]})
    assert not matches(pattern, {"tags": ["a", "a"]})


def test_anything_but_accepts_values_of_another_type() -> None:
    assert matches({"v": [{"anything-but": ["x"]}]}, {"v": 5})
    assert matches({"v": [{"anything-but": ["x"]}]}, {"v": None})
    assert matches({"v": [{"anything-but": {"prefix": "x"}}]}, {"v": 5})


# ------------------------------------------------------------------- numeric


def test_doc_numeric_matching() -> None:
    pattern = {
        "detail": {
            "c-count": [{"numeric": [">", 0, "<=", 5]}],
            "d-count": [{"numeric": ["<", 10]}],
            "x-limit": [{"numeric": ["=", 3.018e2]}],
        }
    }
    assert matches(pattern, EC2_RUNNING)
    assert not matches(pattern, with_detail(**{"c-count": 0}))
    assert not matches(pattern, with_detail(**{"c-count": 6}))
    assert not matches(pattern, with_detail(**{"d-count": 10}))
    assert not matches(pattern, with_detail(**{"x-limit": 301.9}))


def test_numeric_only_matches_json_numbers() -> None:
    pattern = {"n": [{"numeric": [">=", 0]}]}
    assert matches(pattern, {"n": 0})
    assert matches(pattern, {"n": 0.5})
    assert not matches(pattern, {"n": "1"})
    assert not matches(pattern, {"n": True})
    assert not matches(pattern, {"n": None})


def test_numeric_equality_is_numeric_unlike_exact_values() -> None:
    assert matches({"n": [{"numeric": ["=", 300]}]}, {"n": 300.0})


def test_numeric_ignores_values_beyond_the_documented_range() -> None:
    assert matches({"n": [{"numeric": [">", 0]}]}, {"n": 5_000_000_000})
    assert not matches({"n": [{"numeric": [">", 0]}]}, {"n": 5_000_000_001})
    assert not matches({"n": [{"numeric": ["<", 0]}]}, {"n": -1e10})


def test_numeric_bounds_may_come_in_either_order() -> None:
    pattern = {"n": [{"numeric": ["<", 10, ">=", 5]}]}
    assert matches(pattern, {"n": 5})
    assert not matches(pattern, {"n": 10})


# ------------------------------------------------------------------------ cidr


def test_doc_ip_address_matching_ipv4() -> None:
    pattern = {"detail": {"sourceIPAddress": [{"cidr": "10.0.0.0/24"}]}}
    assert matches(pattern, {"detail": {"sourceIPAddress": "10.0.0.0"}})
    assert matches(pattern, {"detail": {"sourceIPAddress": "10.0.0.255"}})
    assert not matches(pattern, {"detail": {"sourceIPAddress": "10.0.1.0"}})


def test_doc_ip_address_matching_ipv6() -> None:
    pattern = {"detail": {"sourceIPAddress": [{"cidr": "2001:db8::/32"}]}}
    assert matches(pattern, {"detail": {"sourceIPAddress": "2001:db8::1"}})
    assert matches(pattern, {"detail": {"sourceIPAddress": "2001:0db8:ffff::"}})
    assert not matches(pattern, {"detail": {"sourceIPAddress": "2001:db9::1"}})
    assert not matches(pattern, {"detail": {"sourceIPAddress": "10.0.0.1"}})


def test_cidr_ignores_values_that_are_not_addresses() -> None:
    pattern = {"ip": [{"cidr": "0.0.0.0/0"}]}
    assert not matches(pattern, {"ip": "not-an-ip"})
    assert not matches(pattern, {"ip": 167772161})
    assert matches(pattern, {"ip": "192.168.1.1"})


# ---------------------------------------------------------------------- exists


def test_doc_exists_matching_true() -> None:
    pattern = {"detail": {"state": [{"exists": True}]}}
    event = {
        "version": "0",
        "id": "7bf73129-1428-4cd3-a780-95db273d1602",
        "detail-type": "EC2 Instance State-change Notification",
        "source": "aws.ec2",
        "account": "123456789012",
        "time": "2015-11-11T21:29:54Z",
        "region": "us-east-1",
        "resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-abcd1111"],
        "detail": {"instance-id": "i-abcd1111", "state": "pending"},
    }
    assert matches(pattern, event)
    no_state = {
        "detail-type": ["EC2 Instance State-change Notification"],
        "resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-02ebd4584a2ebd341"],
        "detail": {"c-count": {"c1": 100}},
    }
    assert not matches(pattern, no_state)


def test_doc_exists_matching_false() -> None:
    pattern = {"detail": {"c-count": [{"exists": False}]}}
    event = {
        "detail-type": ["EC2 Instance State-change Notification"],
        "resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-02ebd4584a2ebd341"],
        "detail": {"state": ["initializing", "running"]},
    }
    assert matches(pattern, event)
    assert not matches(pattern, EC2_RUNNING)


def test_doc_exists_matching_only_works_on_leaf_nodes() -> None:
    pattern = {"detail": {"c-count": [{"exists": False}]}}
    event = {
        "detail-type": ["EC2 Instance State-change Notification"],
        "detail": {"state": ["initializing", "running"], "c-count": {"c1": 100}},
    }
    assert matches(pattern, event)
    assert not matches({"detail": {"c-count": [{"exists": True}]}}, event)


def test_exists_counts_null_as_a_value_and_empty_arrays_as_absent() -> None:
    assert matches({"v": [{"exists": True}]}, {"v": None})
    assert not matches({"v": [{"exists": False}]}, {"v": None})
    assert matches({"v": [{"exists": False}]}, {"v": []})
    assert matches({"v": [{"exists": False}]}, {"v": [{"nested": 1}]})
    assert matches({"v": [{"exists": True}]}, {"v": [{"nested": 1}, 2]})


def test_exists_false_holds_when_a_parent_is_missing() -> None:
    assert matches({"detail": {"c-count": [{"exists": False}]}}, {"source": "x"})
    assert matches({"detail": {"c-count": [{"exists": False}]}}, {"detail": "scalar"})
    assert not matches({"detail": {"c-count": [{"exists": True}]}}, {"source": "x"})


def test_exists_combines_with_other_conditions() -> None:
    pattern = {"v": [{"exists": False}, "a"]}
    assert matches(pattern, {})
    assert matches(pattern, {"v": "a"})
    assert not matches(pattern, {"v": "b"})


# ------------------------------------------------- equals-ignore-case, wildcard


def test_doc_equals_ignore_case_matching() -> None:
    pattern = {"detail-type": [{"equals-ignore-case": "ec2 instance state-change notification"}]}
    assert matches(pattern, EC2_RUNNING)
    assert not matches(pattern, {"detail-type": "EC2 Instance State Notification"})


def test_doc_comparison_operators_equals_ignore_case_name() -> None:
    pattern = {"Name": [{"equals-ignore-case": "alice"}]}
    assert matches(pattern, {"Name": "Alice"})
    assert matches(pattern, {"Name": "ALICE"})
    assert not matches(pattern, {"Name": "Alicia"})


def test_doc_wildcard_matching() -> None:
    pattern = {"source": [{"wildcard": "Simple*Service"}]}
    assert matches(pattern, {"source": "SimpleQueueService"})
    assert matches(pattern, {"source": "SimpleService"})
    assert not matches(pattern, {"source": "SimpleQueueServices"})
    assert not matches(pattern, {"source": "simpleQueueService"})


def test_doc_wildcard_matching_event_bus_arn() -> None:
    pattern = {"EventBusArn": [{"wildcard": "arn:aws:events:us-east-1:*:event-bus/*"}]}
    assert matches(pattern, {"EventBusArn": "arn:aws:events:us-east-1:123456789012:event-bus/b"})
    assert not matches(pattern, {"EventBusArn": "arn:aws:events:us-west-2:1:event-bus/b"})


def test_wildcard_escapes_and_multiple_stars() -> None:
    star = {"v": [{"wildcard": "a\\*b"}]}
    assert matches(star, {"v": "a*b"})
    assert not matches(star, {"v": "axb"})
    backslash = {"v": [{"wildcard": "a\\\\*"}]}
    assert matches(backslash, {"v": "a\\anything"})
    many = {"v": [{"wildcard": "*a*a*a*b"}]}
    assert matches(many, {"v": "xaaab"})
    assert not matches(many, {"v": "a" * 5000})
    assert matches({"v": [{"wildcard": "*"}]}, {"v": ""})
    assert not matches({"v": [{"wildcard": "*"}]}, {"v": 1})
    assert matches({"v": [{"wildcard": "ab*ba"}]}, {"v": "aba" + "ba"})
    assert not matches({"v": [{"wildcard": "ab*ba"}]}, {"v": "aba"})


# -------------------------------------------------------------- complex and $or


def test_doc_complex_example_with_multiple_matching() -> None:
    pattern = {
        "time": [{"prefix": "2017-10-02"}],
        "detail": {
            "state": [{"anything-but": "initializing"}],
            "c-count": [{"numeric": [">", 0, "<=", 5]}],
            "d-count": [{"numeric": ["<", 10]}],
            "x-limit": [{"anything-but": [100, 200, 300]}],
            "source-ip": [{"cidr": "10.0.0.0/8"}],
        },
    }
    assert matches(pattern, EC2_RUNNING)
    assert not matches(pattern, with_detail(**{"source-ip": "11.0.0.1"}))
    assert not matches(pattern, {**EC2_RUNNING, "time": "2017-10-03T00:00:00Z"})


def test_doc_comparison_operators_and_location_day() -> None:
    pattern = {"Location": ["New York"], "Day": ["Monday"]}
    assert matches(pattern, {"Location": "New York", "Day": "Monday"})
    assert not matches(pattern, {"Location": "New York", "Day": "Tuesday"})
    assert not matches(pattern, {"Location": "New York"})


def test_doc_complex_example_with_or_matching() -> None:
    pattern = {
        "detail": {
            "$or": [
                {"c-count": [{"numeric": [">", 0, "<=", 5]}]},
                {"d-count": [{"numeric": ["<", 10]}]},
                {"x-limit": [{"numeric": ["=", 3.018e2]}]},
            ]
        }
    }
    assert matches(pattern, EC2_RUNNING)
    assert matches(pattern, {"detail": {"c-count": 100, "d-count": 100, "x-limit": 301.8}})
    assert not matches(pattern, {"detail": {"c-count": 100, "d-count": 100, "x-limit": 1}})


def test_doc_or_normal() -> None:
    pattern = {
        "source": ["aws.cloudwatch"],
        "$or": [
            {"metricName": ["CPUUtilization", "ReadLatency"]},
            {"namespace": ["AWS/EC2", "AWS/ES"]},
        ],
    }
    assert matches(pattern, {"source": "aws.cloudwatch", "metricName": "ReadLatency"})
    assert matches(pattern, {"source": "aws.cloudwatch", "namespace": "AWS/ES"})
    assert not matches(pattern, {"source": "aws.cloudwatch", "namespace": "AWS/S3"})
    assert not matches(pattern, {"source": "aws.ec2", "metricName": "ReadLatency"})


def test_doc_or_parallel() -> None:
    pattern = {
        "$or": [
            {"metricName": ["CPUUtilization", "ReadLatency"]},
            {"namespace": ["AWS/EC2", "AWS/ES"]},
        ],
        "detail": {
            "$or": [
                {"source": ["aws.cloudwatch"]},
                {"detail-type": ["CloudWatch Alarm State Change"]},
            ]
        },
    }
    event = {"namespace": "AWS/EC2", "detail": {"detail-type": "CloudWatch Alarm State Change"}}
    assert matches(pattern, event)
    assert not matches(pattern, {"namespace": "AWS/EC2", "detail": {"source": "aws.ec2"}})
    assert not matches(pattern, {"detail": {"source": "aws.cloudwatch"}})


def test_doc_or_with_an_and_inside() -> None:
    pattern = {
        "source": ["aws.cloudwatch"],
        "$or": [
            {"metricName": ["CPUUtilization", "ReadLatency"]},
            {"metricType": ["MetricType"], "namespace": ["AWS/EC2", "AWS/ES"]},
            {"scope": ["Service"]},
        ],
    }
    base = {"source": "aws.cloudwatch"}
    assert matches(pattern, {**base, "metricType": "MetricType", "namespace": "AWS/ES"})
    assert not matches(pattern, {**base, "metricType": "MetricType"})
    assert matches(pattern, {**base, "scope": "Service"})


def test_doc_or_nested_in_and() -> None:
    pattern = {
        "source": ["aws.cloudwatch"],
        "$or": [
            {"metricName": ["CPUUtilization", "ReadLatency"]},
            {
                "metricType": ["MetricType"],
                "namespace": ["AWS/EC2", "AWS/ES"],
                "$or": [{"metricId": [1234]}, {"spaceId": [1000]}],
            },
            {"scope": ["Service"]},
        ],
    }
    base = {"source": "aws.cloudwatch", "metricType": "MetricType", "namespace": "AWS/EC2"}
    assert matches(pattern, {**base, "spaceId": 1000})
    assert not matches(pattern, {**base, "spaceId": 1001})
    assert not matches(pattern, {**base, "metricId": "1234"})


# ------------------------------------------------------------------ the object


def test_parse_accepts_json_text_and_exposes_a_copy_of_the_source() -> None:
    pattern = EventPattern.parse('{"source": ["aws.ec2"], "detail": {"n": [1, 2.5, null]}}')
    assert pattern.source == {"source": ["aws.ec2"], "detail": {"n": [1, 2.5, None]}}
    pattern.source["source"].append("mutated")
    assert pattern.source["source"] == ["aws.ec2"]


def test_parse_copies_the_callers_dict() -> None:
    raw: dict[str, Any] = {"source": ["aws.ec2"]}
    pattern = EventPattern.parse(raw)
    raw["source"].append("aws.ecs")
    assert not pattern.matches({"source": "aws.ecs"})


def test_patterns_are_immutable_hashable_and_picklable() -> None:
    a = EventPattern.parse({"a": ["x"], "b": {"c": [1]}})
    b = EventPattern.parse('{"b": {"c": [1]}, "a": ["x"]}')
    assert a == b
    assert hash(a) == hash(b)
    assert a != EventPattern.parse({"a": ["y"], "b": {"c": [1]}})
    assert len({a, b}) == 1
    with pytest.raises(AttributeError):
        a.source = {}  # type: ignore[misc]
    restored = pickle.loads(pickle.dumps(a))
    assert restored == a
    assert restored.matches({"a": "x", "b": {"c": 1}})
    assert copy.deepcopy(a) is a


def test_repr_shows_the_pattern() -> None:
    assert (
        repr(EventPattern.parse({"source": ["aws.ec2"]})) == 'EventPattern({"source":["aws.ec2"]})'
    )
    long = EventPattern.parse({"source": [f"s{i}" for i in range(200)]})
    assert len(repr(long)) < 230
    assert repr(long).endswith("...)")


def test_matches_rejects_a_document_that_is_not_a_mapping() -> None:
    with pytest.raises(TypeError, match="mapping"):
        EventPattern.parse({"a": ["x"]}).matches(["a"])  # type: ignore[arg-type]


def test_booleans_and_integers_are_different_values() -> None:
    assert matches({"flag": [True]}, {"flag": True})
    assert not matches({"flag": [True]}, {"flag": 1})
    assert not matches({"flag": [1]}, {"flag": True})
    assert not matches({"flag": [False]}, {"flag": "false"})


def test_a_leaf_condition_never_matches_an_object() -> None:
    assert not matches({"detail": ["x"]}, {"detail": {"x": 1}})
    assert not matches({"detail": [{"anything-but": "x"}]}, {"detail": {"x": 1}})


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("pattern", "path", "reason"),
    [
        pytest.param({"source": "aws.ec2"}, "source", "array of conditions", id="bare-value"),
        pytest.param({"detail": {"n": 5}}, "detail.n", "got a number", id="bare-number"),
        pytest.param({"source": []}, "source", "empty array", id="empty-array"),
        pytest.param({}, "", "at least one field", id="empty-pattern"),
        pytest.param({"detail": {}}, "detail", "at least one field", id="empty-object"),
        pytest.param({"a": [["x"]]}, "a[0]", "nested", id="nested-array"),
        pytest.param({"a": [{"prefx": "x"}]}, "a[0]", "unknown operator 'prefx'", id="unknown"),
        pytest.param(
            {"a": [{"prefix": "x", "suffix": "y"}]}, "a[0]", "exactly one", id="two-operators"
        ),
        pytest.param({"a": [{}]}, "a[0]", "exactly one", id="empty-operator"),
        pytest.param({"a": [{"prefix": 5}]}, "a[0].prefix", "string", id="prefix-number"),
        pytest.param(
            {"a": [{"prefix": {"equals-ignore-case": 1}}]},
            "a[0].prefix.equals-ignore-case",
            "string",
            id="prefix-ignore-case-number",
        ),
        pytest.param(
            {"a": [{"suffix": {"wildcard": "x"}}]}, "a[0].suffix", "equals-ignore-case", id="sfx"
        ),
        pytest.param(
            {"a": [{"equals-ignore-case": ["x"]}]}, "a[0].equals-ignore-case", "string", id="eic"
        ),
        pytest.param({"a": [{"exists": "true"}]}, "a[0].exists", "true or false", id="exists"),
        pytest.param({"a": [{"exists": 1}]}, "a[0].exists", "true or false", id="exists-int"),
        pytest.param({"a": [{"numeric": 5}]}, "a[0].numeric", "pairs", id="numeric-scalar"),
        pytest.param({"a": [{"numeric": []}]}, "a[0].numeric", "pairs", id="numeric-empty"),
        pytest.param({"a": [{"numeric": [">"]}]}, "a[0].numeric", "pairs", id="numeric-odd"),
        pytest.param(
            {"a": [{"numeric": [">", 0, "<", 5, "=", 3]}]}, "a[0].numeric", "pairs", id="3-pairs"
        ),
        pytest.param(
            {"a": [{"numeric": ["!=", 0]}]}, "a[0].numeric[0]", "unknown numeric", id="op"
        ),
        pytest.param(
            {"a": [{"numeric": [">", "5"]}]}, "a[0].numeric[1]", "needs a number", id="operand"
        ),
        pytest.param(
            {"a": [{"numeric": [">", True]}]}, "a[0].numeric[1]", "needs a number", id="bool"
        ),
        pytest.param(
            {"detail": {"price": [{"numeric": [">", 10, "<=", 5]}]}},
            "detail.price[0].numeric",
            "not below",
            id="empty-range",
        ),
        pytest.param(
            {"a": [{"numeric": [">=", 5, "<=", 5]}]}, "a[0].numeric", "'='", id="point-range"
        ),
        pytest.param(
            {"a": [{"numeric": [">", 0, ">=", 1]}]}, "a[0].numeric[2]", "lower bound", id="2-lo"
        ),
        pytest.param(
            {"a": [{"numeric": ["<", 0, "<=", 1]}]}, "a[0].numeric[2]", "upper bound", id="2-hi"
        ),
        pytest.param(
            {"a": [{"numeric": ["=", 1, "<", 2]}]}, "a[0].numeric", "combined", id="eq-combined"
        ),
        pytest.param({"a": [{"numeric": ["<", 6e9]}]}, "a[0].numeric[1]", "5e9", id="beyond-limit"),
        pytest.param(
            {"a": [{"numeric": ["<", float("inf")]}]}, "a[0].numeric[1]", "finite", id="inf"
        ),
        pytest.param({"a": [{"cidr": "10.0.0.0"}]}, "a[0].cidr", "block", id="cidr-no-prefix"),
        pytest.param({"a": [{"cidr": "10.0.0.0/33"}]}, "a[0].cidr", "invalid CIDR", id="cidr"),
        pytest.param({"a": [{"cidr": "nope/8"}]}, "a[0].cidr", "invalid CIDR", id="cidr-text"),
        pytest.param({"a": [{"cidr": 10}]}, "a[0].cidr", "string", id="cidr-number"),
        pytest.param({"a": [{"wildcard": "a**"}]}, "a[0].wildcard", "consecutive", id="stars"),
        pytest.param({"a": [{"wildcard": "a\\b"}]}, "a[0].wildcard", "escape", id="bad-escape"),
        pytest.param({"a": [{"wildcard": "a\\"}]}, "a[0].wildcard", "escape", id="trailing-bs"),
        pytest.param({"a": [{"wildcard": ["x"]}]}, "a[0].wildcard", "string", id="wc-list"),
        pytest.param(
            {"a": [{"anything-but": ["a", 1]}]}, "a[0].anything-but[1]", "not both", id="ab-mixed"
        ),
        pytest.param({"a": [{"anything-but": []}]}, "a[0].anything-but", "at least", id="ab-[]"),
        pytest.param({"a": [{"anything-but": None}]}, "a[0].anything-but", "got null", id="ab-0"),
        pytest.param(
            {"a": [{"anything-but": [True]}]}, "a[0].anything-but[0]", "boolean", id="ab-bool"
        ),
        pytest.param(
            {"a": [{"anything-but": {"numeric": [">", 1]}}]},
            "a[0].anything-but.numeric",
            "unknown operator",
            id="ab-numeric",
        ),
        pytest.param(
            {"a": [{"anything-but": {"prefix": ["x", "y"]}}]},
            "a[0].anything-but.prefix",
            "string",
            id="ab-prefix-list",
        ),
        pytest.param(
            {"a": [{"anything-but": {"prefix": "x", "suffix": "y"}}]},
            "a[0].anything-but",
            "2 keys",
            id="ab-two-keys",
        ),
        pytest.param(
            {"a": [{"anything-but": {"wildcard": ["ok*", "a**"]}}]},
            "a[0].anything-but.wildcard",
            "consecutive",
            id="ab-wildcard",
        ),
        pytest.param(
            {"a": [{"anything-but": {"equals-ignore-case": []}}]},
            "a[0].anything-but.equals-ignore-case",
            "at least one",
            id="ab-eic-empty",
        ),
        pytest.param({"$or": {"a": ["x"]}}, "$or", "array of at least two", id="or-object"),
        pytest.param({"$or": [{"a": ["x"]}]}, "$or", "got 1", id="or-one"),
        pytest.param({"$or": [{"a": ["x"]}, "b"]}, "$or[1]", "pattern object", id="or-str"),
        pytest.param({"d": {"$or": [{"a": ["x"]}, {}]}}, "d.$or[1]", "at least one", id="or-{}"),
        pytest.param(
            {"$or": [{"a": ["x"]}, {"b": [{"exists": "no"}]}]},
            "$or[1].b[0].exists",
            "true or false",
            id="or-deep",
        ),
        pytest.param({"a": [float("nan")]}, "a[0]", "finite", id="nan-value"),
        pytest.param({"a": [{1, 2}]}, "a[0]", "got a set", id="set-value"),
        pytest.param({1: ["x"]}, "", "strings", id="int-key"),
        pytest.param("[1, 2]", "", "JSON object", id="json-array"),
        pytest.param('{"a": ', "", "not valid JSON", id="json-syntax"),
        pytest.param('{"a": [NaN]}', "", "not valid JSON", id="json-nan"),
    ],
)
def test_invalid_patterns_raise_pattern_error_with_a_path(
    pattern: Any, path: str, reason: str
) -> None:
    with pytest.raises(PatternError) as caught:
        EventPattern.parse(pattern)
    assert caught.value.path == path
    assert reason in caught.value.reason, caught.value.reason


def test_pattern_error_message_names_the_place() -> None:
    with pytest.raises(PatternError, match=r"detail\.price\[0\]\.numeric"):
        EventPattern.parse({"detail": {"price": [{"numeric": [">", 10, "<", 1]}]}})
