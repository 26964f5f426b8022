"""deploy/aws/ray-cluster.yaml: cfn-lint's verdict, what the template must hold (checked on the parsed
template, against the code it deploys), and a smoke deploy on moto.

moto's CloudFormation implements only some resource types. ``moto_template`` keeps those it implements
and puts stand-in ARNs where they reference the others (``NOT_DEPLOYED_BY_MOTO``, asserted exactly, so
the list stays true). Of what moto creates, it ignores some properties: the bucket's lifecycle rules,
notifications and public access block, the ECS capacity providers, network configuration and service
registries, and inline security group egress. The bucket's three are applied here from the template
through the S3 API (so moto's S3 validates their shapes) and exercised: an upload to the inbox reaches
the queue and is read by the Airflow side's own parser. Nothing here reaches AWS.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import os
import re
import secrets
import string
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[3]
TEMPLATE = ROOT / "deploy" / "aws" / "ray-cluster.yaml"
README = ROOT / "deploy" / "aws" / "README.md"
REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's
STACK = "docs"
BUCKET = "docs-ingest-test"
REPOSITORY_ARN = f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/document-ingest-ray"
# Actions AWS grants on Resource "*" only (no resource-level permissions).
STAR_RESOURCE_ACTIONS = {"ecr:GetAuthorizationToken", "cloudwatch:PutMetricData"}
# What moto 5.2.5's CloudFormation does not implement: left out of the smoke deploy, checked above it.
NOT_DEPLOYED_BY_MOTO = {
    "ApiKeysSecret": "AWS::SecretsManager::Secret",
    "RayConnectionSecret": "AWS::SecretsManager::Secret",
    "IngestQueuePolicy": "AWS::SQS::QueuePolicy",
    "DocumentsBucketPolicy": "AWS::S3::BucketPolicy",
    "RayNamespace": "AWS::ServiceDiscovery::PrivateDnsNamespace",
    "HeadDiscoveryService": "AWS::ServiceDiscovery::Service",
    "WorkerScalableTarget": "AWS::ApplicationAutoScaling::ScalableTarget",
    "WorkerCpuScalingPolicy": "AWS::ApplicationAutoScaling::ScalingPolicy",
    "HeadDownAlarm": "AWS::CloudWatch::Alarm",
    "NoWorkersAlarm": "AWS::CloudWatch::Alarm",
    "WorkersAtMaxAlarm": "AWS::CloudWatch::Alarm",
    "FailedDocumentRateAlarm": "AWS::CloudWatch::Alarm",
    "DeadLetterQueueAlarm": "AWS::CloudWatch::Alarm",
}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    import cfnlint.decode

    decoded, problems = cfnlint.decode.decode(str(TEMPLATE))
    assert not problems, problems
    return json.loads(json.dumps(decoded))  # plain dicts and lists, Fn:: forms as in JSON


def resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: res for name, res in template["Resources"].items() if res["Type"] == kind}


def props(template: dict[str, Any], name: str) -> dict[str, Any]:
    return template["Resources"][name]["Properties"]


def default(template: dict[str, Any], parameter: str) -> Any:
    return template["Parameters"][parameter]["Default"]


def container(template: dict[str, Any], task: str) -> dict[str, Any]:
    (definition,) = props(template, task)["ContainerDefinitions"]
    return definition


# --- cfn-lint --------------------------------------------------------------------------------------


def test_cfn_lint_finds_nothing():
    """No error, warning nor informational finding; the only rule skipped (W1030, on the two services)
    is justified beside its ignore_checks in the template."""
    cfn_lint = Path(sys.executable).with_name("cfn-lint")
    command = [str(cfn_lint), "--include-checks", "I", "--format", "parseable", "--", str(TEMPLATE)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert (run.returncode, run.stdout, run.stderr) == (0, "", "")


# --- Security groups -------------------------------------------------------------------------------


def ingress_rules(template: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(group's logical id, rule) for every ingress rule, inline or a resource of its own."""
    rules = []
    for name, group in resources(template, "AWS::EC2::SecurityGroup").items():
        rules += [(name, rule) for rule in group["Properties"].get("SecurityGroupIngress", [])]
    for rule in resources(template, "AWS::EC2::SecurityGroupIngress").values():
        rules.append((rule["Properties"]["GroupId"]["Ref"], rule["Properties"]))
    return rules


def test_job_api_is_reachable_from_security_groups_only(template):
    rules = ingress_rules(template)
    assert rules
    for group, rule in rules:
        assert not {"CidrIp", "CidrIpv6", "SourcePrefixListId"} & set(rule), (group, rule)
        assert "SourceSecurityGroupId" in rule, (group, rule)
    to_job_api = {(group, rule["SourceSecurityGroupId"]["Ref"]) for group, rule in rules
                  if rule["FromPort"] <= 8265 <= rule["ToPort"]}
    # The head's group admits the Airflow side's group(s); the other rule covering 8265 is the Ray nodes'
    # own (GCS, node and worker ports among them).
    assert to_job_api == {("RayHeadSecurityGroup", "JobApiClientSecurityGroup"),
                          ("RayHeadSecurityGroup", "AirflowSecurityGroupId"),
                          ("RayNodeSecurityGroup", "RayNodeSecurityGroup")}
    # The head alone is in the head's group; workers are reachable only from Ray nodes.
    groups = {name: props(template, name)["NetworkConfiguration"]["AwsvpcConfiguration"]["SecurityGroups"]
              for name in ("HeadService", "WorkerService")}
    assert groups == {"HeadService": [{"Ref": "RayNodeSecurityGroup"}, {"Ref": "RayHeadSecurityGroup"}],
                      "WorkerService": [{"Ref": "RayNodeSecurityGroup"}]}
    for name in ("HeadService", "WorkerService"):
        network = props(template, name)["NetworkConfiguration"]["AwsvpcConfiguration"]
        assert network["AssignPublicIp"] == "DISABLED"
    # The client group may reach the Job API and nothing else.
    assert props(template, "JobApiClientSecurityGroup")["SecurityGroupEgress"] == [{
        "Description": "Ray Job API and dashboard", "IpProtocol": "tcp", "FromPort": 8265, "ToPort": 8265,
        "DestinationSecurityGroupId": {"Ref": "RayHeadSecurityGroup"}}]


# --- IAM -------------------------------------------------------------------------------------------


def policy_documents(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    documents = {}
    for name, res in template["Resources"].items():
        properties = res.get("Properties", {})
        if res["Type"] == "AWS::IAM::Role":
            documents[f"{name} (trust)"] = properties["AssumeRolePolicyDocument"]
            for policy in properties.get("Policies", []):
                documents[f"{name}/{policy['PolicyName']}"] = policy["PolicyDocument"]
        elif res["Type"] in ("AWS::IAM::ManagedPolicy", "AWS::SQS::QueuePolicy", "AWS::S3::BucketPolicy"):
            documents[name] = properties["PolicyDocument"]
    return documents


def statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Every statement, both branches of a conditional one."""
    found = []
    for item in document["Statement"]:
        if "Fn::If" in item:
            found += [branch for branch in item["Fn::If"][1:]
                      if isinstance(branch, dict) and "Effect" in branch]
        else:
            found.append(item)
    return found


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def test_no_wildcard_action_and_star_resources_only_where_aws_requires_them(template):
    documents = policy_documents(template)
    assert {"TaskExecutionRole/start-ray-tasks", "RayTaskRole/ray-jobs", "AirflowPolicy"} <= set(documents)
    star_actions = set()
    for where, document in documents.items():
        for statement in statements(document):
            actions = as_list(statement.get("Action"))
            if statement["Effect"] == "Deny":
                continue  # the bucket policy's deny of plain HTTP covers every action, as it should
            assert all(action != "*" and not action.endswith(":*") for action in actions), (where, statement)
            assert "NotAction" not in statement and "NotResource" not in statement, (where, statement)
            assert statement.get("Principal") != "*", (where, statement)
            if "Resource" in statement and "*" in as_list(statement["Resource"]):
                assert statement["Resource"] == "*", (where, statement)
                assert set(actions) <= STAR_RESOURCE_ACTIONS, (where, statement)
                star_actions |= set(actions)
    assert star_actions == STAR_RESOURCE_ACTIONS
    # PutMetricData is held to the pipeline's namespace.
    (metrics,) = [statement for statement in statements(documents["AirflowPolicy"])
                  if statement["Action"] == "cloudwatch:PutMetricData"]
    assert metrics["Condition"] == {"StringEquals": {"cloudwatch:namespace": "DocumentIngest"}}


def test_ecs_roles_trust_only_this_accounts_tasks(template):
    for name in ("TaskExecutionRole", "RayTaskRole"):
        (trust,) = props(template, name)["AssumeRolePolicyDocument"]["Statement"]
        assert trust["Principal"] == {"Service": "ecs-tasks.amazonaws.com"}
        assert trust["Condition"]["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}


# --- Secrets ---------------------------------------------------------------------------------------

# Variables that would carry a secret in clear (TOKENIZERS_PARALLELISM does not).
_SECRET_NAME = re.compile(r"(TOKEN|PASSWORD|API_KEY|PSEUDONYM_KEY|ACCESS_KEY)$")
_KEY_SHAPES = re.compile(r"sk-[A-Za-z0-9_-]{16,}|pcsk_[A-Za-z0-9_]{16,}|AKIA[0-9A-Z]{16}|[0-9a-f]{40,}")


def test_no_secret_value_is_in_the_template(template):
    secrets_ = resources(template, "AWS::SecretsManager::Secret")
    assert set(secrets_) == {"ApiKeysSecret", "RayConnectionSecret"}
    for name, secret in secrets_.items():
        assert "SecretString" not in secret["Properties"], name  # generated, or set out of band
    api_keys = props(template, "ApiKeysSecret")["GenerateSecretString"]
    assert json.loads(api_keys["SecretStringTemplate"]) == {"OPENAI_API_KEY": "", "PINECONE_API_KEY": ""}
    assert api_keys["GenerateStringKey"] == "SOURCE_PSEUDONYM_KEY"
    token = props(template, "RayConnectionSecret")["GenerateSecretString"]
    shape = json.loads(token["SecretStringTemplate"]["Fn::Sub"])
    assert "password" not in shape and token["GenerateStringKey"] == "password"
    assert min(api_keys["PasswordLength"], token["PasswordLength"]) >= 64  # Ray's own tokens: 64 hex digits
    assert not _KEY_SHAPES.findall(TEMPLATE.read_text())
    for task in ("HeadTaskDefinition", "WorkerTaskDefinition"):
        definition = container(template, task)
        names = {variable["Name"] for variable in definition["Environment"]}
        assert not {name for name in names if _SECRET_NAME.search(name)}, names
        assert definition["Secrets"] == [{"Name": "RAY_AUTH_TOKEN",
                                          "ValueFrom": {"Fn::Sub": "${RayConnectionSecret}:password::"}}]
        assert {"Name": "RAY_AUTH_MODE", "Value": "token"} in definition["Environment"]


def test_the_secrets_have_the_shapes_the_code_reads(template, monkeypatch):
    """As CloudFormation would generate them, into moto's Secrets Manager: the workers' loader finds the
    pseudonym key (and no empty API key), Airflow's Secrets Manager backend yields a ray_default connection
    the Ray hook turns into the Job API address and the token."""
    import boto3
    from airflow.providers.amazon.aws.secrets.secrets_manager import SecretsManagerBackend
    from moto import mock_aws

    import include.backends.secrets as worker_secrets
    from include.settings import PipelineSettings
    from ray_operators.hooks.ray_job import JobApiConfig

    set_aws_environment(monkeypatch)
    for name in worker_secrets.WORKER_SECRETS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(worker_secrets, "_loaded", set())
    with mock_aws():
        client = boto3.client("secretsmanager", region_name=REGION)
        keys = generated(props(template, "ApiKeysSecret"), template)
        api_keys = client.create_secret(Name="api-keys", SecretString=keys)["ARN"]
        value = generated(props(template, "RayConnectionSecret"), template)
        client.create_secret(Name=default(template, "RayConnectionSecretName"), SecretString=value)

        settings = PipelineSettings(secrets_manager_secret=api_keys, aws_region=REGION)
        worker_secrets.load_worker_secrets(settings)
        assert len(os.environ["SOURCE_PSEUDONYM_KEY"]) == 64
        assert "OPENAI_API_KEY" not in os.environ  # empty until set out of band

        backend = SecretsManagerBackend(connections_prefix="airflow/connections", region_name=REGION)
        config = JobApiConfig.from_connection(backend.get_connection("ray_default"))
    assert config.address == f"http://ray-head.{default(template, 'NamespaceName')}:8265"
    assert config.address == resolve(template["Outputs"]["JobApiUrl"]["Value"], parameters(template), {})
    assert config.token == json.loads(value)["password"]


def generated(secret: dict[str, Any], template: dict[str, Any]) -> str:
    """What GenerateSecretString makes: the template's JSON plus the generated key."""
    spec = secret["GenerateSecretString"]
    assert spec["ExcludePunctuation"] is True
    shape = json.loads(resolve(spec["SecretStringTemplate"], parameters(template), {}))
    alphabet = string.ascii_letters + string.digits
    length = spec["PasswordLength"]
    shape[spec["GenerateStringKey"]] = "".join(secrets.choice(alphabet) for _ in range(length))
    return json.dumps(shape)


# --- The bucket ------------------------------------------------------------------------------------


def code_prefixes() -> dict[str, str]:
    """The bucket's prefixes as the code lays them out (keys relative to the bucket)."""
    from include.control.batching import run_folder
    from include.prune import UNREDACTED_STAGES
    from include.settings import PipelineSettings
    from include.stages import STAGES
    from include.storage import split_s3_uri

    settings = PipelineSettings()
    key = lambda uri: split_s3_uri(uri)[1]  # noqa: E731
    runs = key(run_folder(settings.artifacts_uri, "document_ingest", "run")).rsplit("/", 1)[0] + "/"
    prefixes = {"inbox": key(settings.inbox_uri), "quarantine": key(settings.quarantine_uri),
                "artifacts": key(settings.artifacts_uri), "queries": key(settings.queries_uri),
                "answers": key(settings.answers_uri), "runs": runs}
    for name, stage in STAGES.items():
        kind = "unredacted" if name in UNREDACTED_STAGES else "redacted"
        prefixes[f"{kind}:{name}"] = f"{prefixes['artifacts']}{stage.output_dir}/"
    return prefixes


def expiration(rules: list[dict[str, Any]], key: str, values: dict[str, Any]) -> int | None:
    """The day S3 deletes ``key``: the earliest expiration of the enabled rules whose prefix it has."""
    days = [int(resolve(rule["ExpirationInDays"], values, {})) for rule in rules
            if rule["Status"] == "Enabled" and "ExpirationInDays" in rule
            and key.startswith(rule.get("Prefix", ""))]
    return min(days, default=None)


def test_lifecycle_expires_the_unredacted_outputs_first(template):
    prefixes = code_prefixes()
    unredacted_stages = [name for name in prefixes if name.startswith("unredacted:")]
    assert unredacted_stages == ["unredacted:extract", "unredacted:chunk"]
    rules = props(template, "DocumentsBucket")["LifecycleConfiguration"]["Rules"]
    values = parameters(template)

    def days(kind: str) -> set[int | None]:
        return {expiration(rules, prefixes[name] + "doc/x.json", values) for name in prefixes
                if name.startswith(f"{kind}:")}

    unredacted, later = days("unredacted"), days("redacted")
    later.add(expiration(rules, prefixes["runs"] + "run-1/report.json", values))
    assert unredacted == {7} and later == {365}
    assert expiration(rules, prefixes["quarantine"] + "bad.pdf", values) == 30
    # An object gone from the inbox is a deleted document: the inbox never expires; nor do answers.
    for kept in ("inbox", "queries", "answers"):
        assert expiration(rules, prefixes[kept] + "a.pdf", values) is None, kept
    # For any values the parameters accept, the unredacted outputs still go first.
    bounds = template["Parameters"]
    unredacted_most = bounds["UnredactedArtifactsExpirationDays"]["MaxValue"]
    assert unredacted_most < bounds["ArtifactsExpirationDays"]["MinValue"]
    # Incomplete multipart uploads are cleaned up everywhere.
    (abort,) = [rule for rule in rules if "AbortIncompleteMultipartUpload" in rule]
    assert "Prefix" not in abort


def test_bucket_is_private_encrypted_and_kept(template):
    bucket = template["Resources"]["DocumentsBucket"]
    assert bucket["DeletionPolicy"] == bucket["UpdateReplacePolicy"] == "Retain"
    properties = bucket["Properties"]
    assert set(properties["PublicAccessBlockConfiguration"].values()) == {True}
    assert len(properties["PublicAccessBlockConfiguration"]) == 4
    (sse,) = properties["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert sse["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms")
    assert "VersioningConfiguration" not in properties  # deletions (erasure, expiry) must really delete


def test_inbox_events_reach_a_queue_with_a_dead_letter_queue(template):
    bucket = template["Resources"]["DocumentsBucket"]
    assert bucket["DependsOn"] == "IngestQueuePolicy"  # S3 checks the queue's permission when configured
    configurations = bucket["Properties"]["NotificationConfiguration"]["QueueConfigurations"]
    assert {c["Event"] for c in configurations} == {"s3:ObjectCreated:*", "s3:ObjectRemoved:*"}
    inbox_only = {"S3Key": {"Rules": [{"Name": "prefix", "Value": code_prefixes()["inbox"]}]}}
    for configuration in configurations:
        assert configuration["Queue"] == {"Fn::GetAtt": ["IngestQueue", "Arn"]}
        assert configuration["Filter"] == inbox_only
    redrive = props(template, "IngestQueue")["RedrivePolicy"]
    assert redrive["deadLetterTargetArn"] == {"Fn::GetAtt": ["IngestDeadLetterQueue", "Arn"]}
    assert 1 < redrive["maxReceiveCount"] <= 10
    # The trigger's default visibility timeout (S3EventQueueTrigger) fits the queue's.
    assert props(template, "IngestQueue")["VisibilityTimeout"] >= 300
    (allow,) = props(template, "IngestQueuePolicy")["PolicyDocument"]["Statement"]
    assert allow["Principal"] == {"Service": "s3.amazonaws.com"} and allow["Action"] == "sqs:SendMessage"
    bucket_arn = {"Fn::Sub": "arn:${AWS::Partition}:s3:::${BucketName}"}
    assert allow["Condition"]["ArnLike"] == {"aws:SourceArn": bucket_arn}


# --- Ray -------------------------------------------------------------------------------------------


def test_ray_nodes_get_the_job_settings_and_only_workers_offer_the_worker_resource(template):
    from include.settings import PipelineSettings, is_job_setting

    head, worker = container(template, "HeadTaskDefinition"), container(template, "WorkerTaskDefinition")
    assert head["Environment"] == worker["Environment"]
    environment = {variable["Name"]: variable["Value"] for variable in head["Environment"]}
    pipeline = {name for name in environment if name.startswith("PIPELINE_")}
    assert all(is_job_setting(name) for name in pipeline), pipeline
    assert environment["PIPELINE_ARTIFACTS_URI"] == {"Fn::Sub": "s3://${DocumentsBucket}/artifacts/"}
    assert environment["PIPELINE_SECRETS_MANAGER_SECRET"] == {"Ref": "ApiKeysSecret"}
    assert environment["HF_HUB_OFFLINE"] == "1"
    # The parameter's default is a valid PIPELINE_RAY_WORKER_RESOURCE.
    PipelineSettings(ray_worker_resource=default(template, "RayWorkerResource"))

    assert head["Command"][:4] == ["ray", "start", "--head", "--block"]
    assert {"--port=6379", "--dashboard-host=0.0.0.0", "--num-cpus=0"} <= set(head["Command"])
    assert not [arg for arg in head["Command"] if "resources" in str(arg)]
    assert worker["Command"][:2] == ["ray", "start"] and "--block" in worker["Command"]
    assert {"Fn::Sub": "--address=ray-head.${NamespaceName}:6379"} in worker["Command"]
    assert {"Fn::Sub": '--resources={"${RayWorkerResource}": 1000}'} in worker["Command"]
    assert worker["StopTimeout"] == 120  # Fargate Spot's two-minute warning
    assert props(template, "HeadDiscoveryService")["Name"] == "ray-head"


def test_head_is_on_demand_and_workers_spot_with_an_on_demand_base(template):
    assert props(template, "Cluster")["CapacityProviders"] == ["FARGATE", "FARGATE_SPOT"]
    head = props(template, "HeadService")
    assert head["DesiredCount"] == 1
    assert [s["CapacityProvider"] for s in head["CapacityProviderStrategy"]] == ["FARGATE"]
    assert head["DeploymentConfiguration"]["MaximumPercent"] == 100  # never two heads at once
    workers = props(template, "WorkerService")["CapacityProviderStrategy"]
    strategy = {provider["CapacityProvider"]: provider for provider in workers}
    assert strategy["FARGATE"]["Base"] >= 1
    assert strategy["FARGATE_SPOT"]["Weight"] > strategy["FARGATE"]["Weight"]
    target = props(template, "WorkerScalableTarget")
    assert (target["ScalableDimension"], target["ServiceNamespace"]) == ("ecs:service:DesiredCount", "ecs")
    assert (default(template, "WorkerMinCount"), default(template, "WorkerMaxCount")) == (1, 10)
    assert target["MinCapacity"] == {"Ref": "WorkerMinCount"}
    assert target["MaxCapacity"] == {"Ref": "WorkerMaxCount"}
    tracking = props(template, "WorkerCpuScalingPolicy")["TargetTrackingScalingPolicyConfiguration"]
    metric = tracking["PredefinedMetricSpecification"]["PredefinedMetricType"]
    assert metric == "ECSServiceAverageCPUUtilization"
    assert tracking["TargetValue"] == {"Ref": "WorkerCpuTarget"}
    assert {"HeadCpu": "2048", "HeadMemory": 8192, "WorkerCpu": "4096", "WorkerMemory": 16384} == {
        name: default(template, name) for name in ("HeadCpu", "HeadMemory", "WorkerCpu", "WorkerMemory")}


def test_alarms_watch_the_metrics_the_readme_names(template):
    alarms = resources(template, "AWS::CloudWatch::Alarm")
    assert set(alarms) == {"HeadDownAlarm", "NoWorkersAlarm", "WorkersAtMaxAlarm", "FailedDocumentRateAlarm",
                           "DeadLetterQueueAlarm"}
    at_max = alarms["WorkersAtMaxAlarm"]["Properties"]
    assert (at_max["Threshold"], at_max["ComparisonOperator"]) == ({"Ref": "WorkerMaxCount"},
                                                                   "GreaterThanOrEqualToThreshold")
    insights = props(template, "Cluster")["ClusterSettings"]
    assert insights == [{"Name": "containerInsights", "Value": "enabled"}]
    metrics = [m["MetricStat"]["Metric"] for m in alarms["FailedDocumentRateAlarm"]["Properties"]["Metrics"]
               if "MetricStat" in m]
    assert {(m["Namespace"], m["MetricName"]) for m in metrics} == {("DocumentIngest", "DocumentsFailed"),
                                                                    ("DocumentIngest", "DocumentsIngested")}
    deployment = [{"Name": "Deployment", "Value": {"Ref": "AWS::StackName"}}]
    assert all(metric["Dimensions"] == deployment for metric in metrics)
    readme = README.read_text()
    for name in ("DocumentIngest", "DocumentsFailed", "DocumentsIngested", "Deployment"):
        assert name in readme, name


def test_outputs_and_the_airflow_environment(template):
    from include.control.settings import ControlSettings

    outputs = template["Outputs"]
    assert {"JobApiUrl", "BucketName", "IngestQueueUrl", "ApiKeysSecretArn", "RayConnectionSecretArn",
            "AirflowPolicyArn", "ClusterName"} <= set(outputs)
    assert outputs["JobApiUrl"]["Value"] == {"Fn::Sub": "http://ray-head.${NamespaceName}:8265"}
    joined = outputs["AirflowEnvironment"]["Value"]["Fn::Join"][1]
    names = {(item["Fn::Sub"] if isinstance(item, dict) else item).split("=", 1)[0] for item in joined}
    fields = {f"PIPELINE_{field.upper()}" for field in ControlSettings.model_fields}
    assert names <= fields, names - fields
    assert {"PIPELINE_INGEST_EVENTS", "PIPELINE_INGEST_QUEUE_URL", "PIPELINE_RAY_WORKER_RESOURCE"} <= names


# --- Smoke deploy on moto --------------------------------------------------------------------------


def parameters(template: dict[str, Any], **given: Any) -> dict[str, Any]:
    values = {name: spec.get("Default") for name, spec in template["Parameters"].items()}
    values.update({"BucketName": BUCKET, "AWS::Region": REGION, "AWS::AccountId": ACCOUNT,
                   "AWS::Partition": "aws", "AWS::StackName": STACK}, **given)
    return values


def resolve(node: Any, values: dict[str, Any], attributes: dict[str, Any]) -> Any:
    """Ref, Fn::GetAtt and Fn::Sub against known values (enough for the properties read here)."""
    if isinstance(node, list):
        return [resolve(item, values, attributes) for item in node]
    if not isinstance(node, dict):
        return node
    if set(node) == {"Ref"}:
        return values[node["Ref"]]
    if set(node) == {"Fn::GetAtt"}:
        return attributes[".".join(node["Fn::GetAtt"])]
    if set(node) == {"Fn::Sub"} and isinstance(node["Fn::Sub"], str):
        return re.sub(r"\$\{([^}]+)\}", lambda m: str(values.get(m.group(1), attributes.get(m.group(1)))),
                      node["Fn::Sub"])
    return {key: resolve(value, values, attributes) for key, value in node.items()}


def stand_in(name: str, attribute: str | None = None) -> str:
    return f"arn:aws:standin:{REGION}:{ACCOUNT}:{name}" + (f"/{attribute}" if attribute else "")


def moto_template(template: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The template without the resources moto does not implement, stand-in ARNs in their references."""
    from moto.cloudformation.parsing import get_model_map

    implemented = set(get_model_map())
    dropped = {name: res["Type"] for name, res in template["Resources"].items()
               if res["Type"] not in implemented}

    def swap(node: Any) -> Any:
        if isinstance(node, list):
            return [swap(item) for item in node]
        if not isinstance(node, dict):
            return node
        if set(node) == {"Ref"} and node["Ref"] in dropped:
            return stand_in(node["Ref"])
        if set(node) == {"Fn::GetAtt"} and node["Fn::GetAtt"][0] in dropped:
            return stand_in(*node["Fn::GetAtt"])
        if set(node) == {"Fn::Sub"}:
            text, names = (node["Fn::Sub"], None) if isinstance(node["Fn::Sub"], str) else node["Fn::Sub"]

            def replace(match: re.Match) -> str:
                name, _, attribute = match.group(1).partition(".")
                return stand_in(name, attribute or None) if name in dropped else match.group(0)

            text = re.sub(r"\$\{([A-Za-z0-9_.:]+)\}", replace, text)
            return {"Fn::Sub": text if names is None else [text, swap(names)]}
        return {key: swap(value) for key, value in node.items()}

    kept = {}
    for name, res in template["Resources"].items():
        if name in dropped:
            continue
        res = swap(res)
        if "DependsOn" in res:
            depends = [d for d in as_list(res.pop("DependsOn")) if d not in dropped]
            if depends:
                res["DependsOn"] = depends
        kept[name] = res
    subset = {**template, "Resources": kept, "Outputs": swap(template["Outputs"])}
    subset.pop("Rules", None)  # parameter rules: CloudFormation's, not moto's
    return subset, dropped


def set_aws_environment(monkeypatch) -> None:
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def deployed(template):
    """The stack on moto, with every optional part on: an ECR repository, the Airflow side's group."""
    import boto3
    from moto import mock_aws

    with pytest.MonkeyPatch.context() as monkeypatch:
        set_aws_environment(monkeypatch)
        with mock_aws():
            airflow_group = boto3.client("ec2", region_name=REGION).create_security_group(
                GroupName="airflow-workers", Description="MWAA workers")["GroupId"]
            subset, dropped = moto_template(template)
            given = {"BucketName": BUCKET, "RayImage": "example.com/document-ingest-ray:1",
                     "RayImageRepositoryArn": REPOSITORY_ARN, "AirflowSecurityGroupId": airflow_group}
            cloudformation = boto3.client("cloudformation", region_name=REGION)
            cloudformation.create_stack(StackName=STACK, TemplateBody=json.dumps(subset), Parameters=[
                {"ParameterKey": key, "ParameterValue": value} for key, value in given.items()])
            (stack,) = cloudformation.describe_stacks(StackName=STACK)["Stacks"]
            created = {r["LogicalResourceId"]: r for r in cloudformation.describe_stack_resources(
                StackName=STACK)["StackResources"] if "LogicalResourceId" in r}
            yield {"stack": stack, "created": created, "dropped": dropped, "given": given,
                   "outputs": {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]},
                   "client": lambda service: boto3.client(service, region_name=REGION)}


def test_moto_deploys_every_resource_it_implements(template, deployed):
    assert deployed["stack"]["StackStatus"] == "CREATE_COMPLETE"
    assert deployed["dropped"] == NOT_DEPLOYED_BY_MOTO
    expected = set(template["Resources"]) - set(NOT_DEPLOYED_BY_MOTO)
    assert set(deployed["created"]) == expected
    assert {r["ResourceStatus"] for r in deployed["created"].values()} == {"CREATE_COMPLETE"}
    outputs = deployed["outputs"]
    assert outputs["BucketName"] == BUCKET and outputs["ClusterName"] == f"{STACK}-ray"
    assert outputs["JobApiUrl"] == "http://ray-head.ray.internal:8265"
    assert outputs["AirflowPolicyArn"].startswith(f"arn:aws:iam::{ACCOUNT}:policy/")
    assert f"PIPELINE_INGEST_QUEUE_URL={outputs['IngestQueueUrl']}" in outputs["AirflowEnvironment"]


def test_moto_queue_redrives_to_the_dead_letter_queue(deployed):
    sqs = deployed["client"]("sqs")
    attributes = sqs.get_queue_attributes(QueueUrl=deployed["outputs"]["IngestQueueUrl"],
                                          AttributeNames=["All"])["Attributes"]
    dead_letter = queue_attribute(sqs, deployed["outputs"]["IngestDeadLetterQueueUrl"], "QueueArn")
    redrive = json.loads(attributes["RedrivePolicy"])
    assert redrive == {"deadLetterTargetArn": dead_letter, "maxReceiveCount": 5}
    assert attributes["SqsManagedSseEnabled"] == "true" and attributes["VisibilityTimeout"] == "300"


def test_moto_bucket_notifies_the_queue_of_inbox_changes_only(template, deployed):
    """moto's CloudFormation creates the bucket (and its encryption) but not its lifecycle, notification
    or public access block: they are put from the template's own properties through the S3 API, then an
    upload and a delete in the inbox reach the queue and the Airflow side's parser reads them."""
    from include.control.inbox_events import inbox_changes

    s3, sqs = deployed["client"]("s3"), deployed["client"]("sqs")
    queue_url = deployed["outputs"]["IngestQueueUrl"]
    queue_arn = queue_attribute(sqs, queue_url, "QueueArn")
    properties = resolve(props(template, "DocumentsBucket"), parameters(template),
                         {"IngestQueue.Arn": queue_arn})
    sse = s3.get_bucket_encryption(Bucket=BUCKET)["ServerSideEncryptionConfiguration"]["Rules"]
    assert sse[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"

    s3.put_public_access_block(Bucket=BUCKET, PublicAccessBlockConfiguration=properties[
        "PublicAccessBlockConfiguration"])
    rules = [lifecycle_rule(rule) for rule in properties["LifecycleConfiguration"]["Rules"]]
    s3.put_bucket_lifecycle_configuration(Bucket=BUCKET, LifecycleConfiguration={"Rules": rules})
    assert {r["ID"]: r.get("Expiration", {}).get("Days") for r in s3.get_bucket_lifecycle_configuration(
        Bucket=BUCKET)["Rules"]} == {"unredacted-extracted": 7, "unredacted-chunks": 7, "artifacts": 365,
                                     "quarantine": 30, "abort-incomplete-multipart-uploads": None}
    queues = [{"QueueArn": c["Queue"], "Events": [c["Event"]],
               "Filter": {"Key": {"FilterRules": c["Filter"]["S3Key"]["Rules"]}}}
              for c in properties["NotificationConfiguration"]["QueueConfigurations"]]
    s3.put_bucket_notification_configuration(Bucket=BUCKET,
                                             NotificationConfiguration={"QueueConfigurations": queues})
    changes = [inbox_changes(body, BUCKET, "inbox/") for body in receive(sqs, queue_url)]
    assert all(change == [] for change in changes)  # S3's test event, if any: nothing for the inbox

    s3.put_object(Bucket=BUCKET, Key="inbox/reports/a #1.pdf", Body=b"%PDF-1.7")
    s3.put_object(Bucket=BUCKET, Key="artifacts/extracted/doc/pages.jsonl", Body=b"{}")
    s3.put_object(Bucket=BUCKET, Key="quarantine/bad.pdf", Body=b"x")
    s3.delete_object(Bucket=BUCKET, Key="inbox/reports/a #1.pdf")
    seen = [change for body in receive(sqs, queue_url) for change in inbox_changes(body, BUCKET, "inbox/")]
    assert [(kind, key) for kind, key, _ in seen] == [("created", "inbox/reports/a #1.pdf"),
                                                      ("removed", "inbox/reports/a #1.pdf")]


def lifecycle_rule(rule: dict[str, Any]) -> dict[str, Any]:
    """A CloudFormation lifecycle rule in the S3 API's shape."""
    shaped: dict[str, Any] = {"ID": rule["Id"], "Status": rule["Status"],
                              "Filter": {"Prefix": rule.get("Prefix", "")}}
    if "ExpirationInDays" in rule:
        shaped["Expiration"] = {"Days": int(rule["ExpirationInDays"])}
    if "AbortIncompleteMultipartUpload" in rule:
        shaped["AbortIncompleteMultipartUpload"] = rule["AbortIncompleteMultipartUpload"]
    return shaped


def queue_attribute(sqs, queue_url: str, name: str) -> str:
    return sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=[name])["Attributes"][name]


def receive(sqs, queue_url: str) -> list[str]:
    bodies = []
    while batch := sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10,
                                       WaitTimeSeconds=0).get("Messages"):
        bodies += [message["Body"] for message in batch]
        sqs.delete_message_batch(QueueUrl=queue_url, Entries=[
            {"Id": str(n), "ReceiptHandle": message["ReceiptHandle"]} for n, message in enumerate(batch)])
    return bodies


def document(stored: Any) -> dict[str, Any]:
    """A policy document as moto returns it: a dict, or (inline policies made by its CloudFormation) the
    Python repr of one; a statement CloudFormation would drop (AWS::NoValue) comes back as None."""
    if isinstance(stored, str):
        stored = ast.literal_eval(stored)
    return {**stored, "Statement": [s for s in as_list(stored["Statement"]) if s is not None]}


def allows(documents: list[dict[str, Any]], action: str, resource: str) -> bool:
    """Whether the identity policies allow ``action`` on ``resource`` (conditions not evaluated)."""
    def matches(statement: dict[str, Any]) -> bool:
        return (any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in as_list(statement["Action"]))
                and any(fnmatch.fnmatchcase(resource, r) for r in as_list(statement["Resource"])))

    found = [s for document in documents for s in document["Statement"] if matches(s)]
    return any(s["Effect"] == "Allow" for s in found) and not any(s["Effect"] == "Deny" for s in found)


def test_moto_roles_allow_what_each_tier_does_and_no_more(deployed):
    iam = deployed["client"]("iam")

    def role_policies(logical_id: str) -> list[dict[str, Any]]:
        role = deployed["created"][logical_id]["PhysicalResourceId"]
        return [document(iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"])
                for name in iam.list_role_policies(RoleName=role)["PolicyNames"]]

    policy_arn = deployed["outputs"]["AirflowPolicyArn"]
    version = iam.get_policy(PolicyArn=policy_arn)["Policy"]["DefaultVersionId"]
    stored = iam.get_policy_version(PolicyArn=policy_arn, VersionId=version)["PolicyVersion"]["Document"]
    airflow = [document(stored)]
    ray, execution = role_policies("RayTaskRole"), role_policies("TaskExecutionRole")
    bucket, objects = f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/"
    api_keys, token = stand_in("ApiKeysSecret"), stand_in("RayConnectionSecret")
    queue = queue_attribute(deployed["client"]("sqs"), deployed["outputs"]["IngestQueueUrl"], "QueueArn")
    log_group = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/ecs/{STACK}/ray-head"

    expectations = [
        (ray, "s3:ListBucket", bucket, True),
        (ray, "s3:GetObject", objects + "inbox/a.pdf", True),
        (ray, "s3:PutObject", objects + "artifacts/extracted/d/pages.jsonl", True),
        (ray, "s3:DeleteObject", objects + "artifacts/embeddings/d/vectors.parquet", True),
        (ray, "s3:PutObject", objects + "answers/q/part-0.parquet", True),
        (ray, "s3:GetObject", objects + "queries/q.parquet", True),
        (ray, "secretsmanager:GetSecretValue", api_keys, True),
        (ray, "s3:PutObject", objects + "inbox/a.pdf", False),
        (ray, "s3:DeleteObject", objects + "inbox/a.pdf", False),
        (ray, "s3:PutObject", objects + "quarantine/a.pdf", False),
        (ray, "s3:GetObject", "arn:aws:s3:::another-bucket/inbox/a.pdf", False),
        (ray, "secretsmanager:GetSecretValue", token, False),  # the nodes get it from ECS, at start
        (airflow, "s3:ListBucket", bucket, True),
        (airflow, "s3:GetObject", objects + "artifacts/runs/r/b/extract/job.json", True),
        (airflow, "s3:PutObject", objects + "artifacts/runs/r/plan.json", True),
        (airflow, "s3:PutObject", objects + "quarantine/a.pdf", True),
        (airflow, "s3:DeleteObject", objects + "inbox/a.pdf", True),
        (airflow, "sqs:ReceiveMessage", queue, True),
        (airflow, "sqs:DeleteMessage", queue, True),
        (airflow, "secretsmanager:GetSecretValue", token, True),
        (airflow, "cloudwatch:PutMetricData", "*", True),
        (airflow, "s3:PutObject", objects + "inbox/a.pdf", False),
        (airflow, "s3:PutObject", objects + "artifacts/extracted/d/pages.jsonl", False),
        (airflow, "s3:DeleteObject", objects + "artifacts/embeddings/d/vectors.parquet", False),
        (airflow, "sqs:SendMessage", queue, False),
        (airflow, "secretsmanager:GetSecretValue", api_keys, False),  # the workers' keys stay on the cluster
        (execution, "secretsmanager:GetSecretValue", token, True),
        (execution, "secretsmanager:GetSecretValue", api_keys, False),
        (execution, "ecr:BatchGetImage", REPOSITORY_ARN, True),
        (execution, "ecr:BatchGetImage", f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/other", False),
        (execution, "logs:PutLogEvents", log_group, True),
    ]
    wrong = [(action, resource, want) for documents, action, resource, want in expectations
             if allows(documents, action, resource) != want]
    assert not wrong


def test_moto_ecs_logs_and_security_groups(deployed):
    ecs, logs, ec2 = deployed["client"]("ecs"), deployed["client"]("logs"), deployed["client"]("ec2")
    cluster = deployed["outputs"]["ClusterName"]
    services = {s["serviceName"]: s for s in ecs.describe_services(
        cluster=cluster, services=["ray-head", "ray-worker"])["services"]}
    assert {name: s["desiredCount"] for name, s in services.items()} == {"ray-head": 1, "ray-worker": 1}
    head, worker = (ecs.describe_task_definition(taskDefinition=services[name]["taskDefinition"])
                    ["taskDefinition"]["containerDefinitions"][0] for name in ("ray-head", "ray-worker"))
    assert "--num-cpus=0" in head["command"]
    assert {"--address=ray-head.ray.internal:6379", "--num-cpus=4",
            '--resources={"pipeline_worker": 1000}'} <= set(worker["command"])
    environment = {variable["name"]: variable["value"] for variable in worker["environment"]}
    assert environment["PIPELINE_INBOX_URI"] == f"s3://{BUCKET}/inbox/"
    assert environment["PIPELINE_ARTIFACTS_URI"] == f"s3://{BUCKET}/artifacts/"
    groups = {g["logGroupName"]: g["retentionInDays"] for g in logs.describe_log_groups()["logGroups"]}
    assert groups == {f"/ecs/{STACK}/ray-head": 30, f"/ecs/{STACK}/ray-worker": 30}

    head_group = deployed["created"]["RayHeadSecurityGroup"]["PhysicalResourceId"]
    client_group = deployed["outputs"]["JobApiClientSecurityGroupId"]
    (described,) = ec2.describe_security_groups(GroupIds=[head_group])["SecurityGroups"]
    sources = {(p["FromPort"], p["ToPort"], pair["GroupId"]) for p in described["IpPermissions"]
               for pair in p["UserIdGroupPairs"]}
    assert sources == {(8265, 8265, client_group), (8265, 8265, deployed["given"]["AirflowSecurityGroupId"])}
    assert not [p for p in described["IpPermissions"] if p["IpRanges"] or p["Ipv6Ranges"]]
