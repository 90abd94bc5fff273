//! Comparing a rendered definition with a registered revision, ignoring what ECS adds or
//! reorders (ecspresso's `sortTaskDefinition` rules): empty lists and maps, `null`,
//! container `cpu: 0`, `essential: true`, port mapping defaults, and the order of
//! environment, secrets, port mappings, mount points, volumes and containers.

use serde_json::Value;

use super::render::DESCRIBE_ONLY;

/// The canonical form of a task definition (request or DescribeTaskDefinition answer).
pub fn canonical(doc: &Value) -> Value {
    let mut doc = prune(doc).unwrap_or(Value::Object(Default::default()));
    let Value::Object(top) = &mut doc else { return doc };
    for field in DESCRIBE_ONLY {
        top.remove(field);
    }
    // Tags are not part of a revision DescribeTaskDefinition returns.
    top.remove("tags");
    // Under awsvpc and host, an omitted hostPort is the containerPort; under bridge, 0 (dynamic).
    let same_port = matches!(top.get("networkMode").and_then(Value::as_str), Some("awsvpc" | "host"));
    sort_by_text(top.get_mut("requiresCompatibilities"));
    sort_by_text(top.get_mut("volumes"));
    sort_by_text(top.get_mut("placementConstraints"));
    if let Some(Value::Array(containers)) = top.get_mut("containerDefinitions") {
        for c in containers.iter_mut() {
            let Value::Object(c) = c else { continue };
            if c.get("cpu").and_then(Value::as_i64) == Some(0) {
                c.remove("cpu");
            }
            if c.get("essential").and_then(Value::as_bool) == Some(true) {
                c.remove("essential");
            }
            if let Some(Value::Array(ports)) = c.get_mut("portMappings") {
                for p in ports.iter_mut() {
                    let Value::Object(p) = p else { continue };
                    if p.get("protocol").and_then(Value::as_str) == Some("tcp") {
                        p.remove("protocol");
                    }
                    let default =
                        if same_port { p.get("containerPort").cloned() } else { Some(Value::from(0)) };
                    if p.get("hostPort").is_some() && p.get("hostPort").cloned() == default {
                        p.remove("hostPort");
                    }
                }
            }
            for field in [
                "environment",
                "secrets",
                "portMappings",
                "mountPoints",
                "volumesFrom",
                "ulimits",
                "dependsOn",
            ] {
                sort_by_text(c.get_mut(field));
            }
        }
        containers.sort_by_key(|c| c.get("name").and_then(Value::as_str).unwrap_or_default().to_owned());
    }
    doc
}

/// Drops `null`, empty lists and empty objects, recursively.
fn prune(v: &Value) -> Option<Value> {
    match v {
        Value::Null => None,
        Value::Array(items) => {
            let items: Vec<Value> = items.iter().filter_map(prune).collect();
            (!items.is_empty()).then_some(Value::Array(items))
        }
        Value::Object(map) => {
            let map: serde_json::Map<String, Value> =
                map.iter().filter_map(|(k, v)| Some((k.clone(), prune(v)?))).collect();
            (!map.is_empty()).then_some(Value::Object(map))
        }
        other => Some(other.clone()),
    }
}

fn sort_by_text(v: Option<&mut Value>) {
    if let Some(Value::Array(items)) = v {
        items.sort_by_key(|i| i.to_string());
    }
}

/// The JSON pointers at which two canonical definitions differ, in document order.
pub fn differences(old: &Value, new: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(old, new, &mut String::new(), &mut out);
    out
}

fn walk(old: &Value, new: &Value, at: &mut String, out: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let len = at.len();
                at.push('/');
                at.push_str(&k.replace('~', "~0").replace('/', "~1"));
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => walk(x, y, at, out),
                    _ => out.push(at.clone()),
                }
                at.truncate(len);
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                let len = at.len();
                at.push_str(&format!("/{i}"));
                walk(x, y, at, out);
                at.truncate(len);
            }
        }
        (a, b) if a == b => {}
        _ => out.push(if at.is_empty() { "/".to_owned() } else { at.clone() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ecs_defaults_and_ordering_are_ignored() {
        let rendered = json!({"family":"web","networkMode":"awsvpc","containerDefinitions":[{"name":"app","image":"busybox",
            "environment":[{"name":"B","value":"2"},{"name":"A","value":"1"}],"portMappings":[{"containerPort":80}]}]});
        let described = json!({"taskDefinitionArn":"arn:aws:ecs:us-east-1:0:task-definition/web:3","revision":3,"status":"ACTIVE",
            "family":"web","networkMode":"awsvpc","volumes":[],"placementConstraints":[],"compatibilities":["EC2"],
            "containerDefinitions":[{"name":"app","image":"busybox","cpu":0,"essential":true,"mountPoints":[],"volumesFrom":[],
            "environment":[{"name":"A","value":"1"},{"name":"B","value":"2"}],
            "portMappings":[{"containerPort":80,"hostPort":80,"protocol":"tcp"}]}]});
        assert_eq!(canonical(&rendered), canonical(&described));
        // A real change shows (the positive control).
        let mut changed = rendered.clone();
        changed["containerDefinitions"][0]["environment"][0]["value"] = json!("3");
        assert_eq!(
            differences(&canonical(&described), &canonical(&changed)),
            ["/containerDefinitions/0/environment/1/value"]
        );
        // Bridge mode: ECS writes hostPort 0 for an omitted one.
        let bridge = json!({"family":"web","containerDefinitions":[{"name":"app","portMappings":[{"containerPort":80}]}]});
        let described = json!({"family":"web","containerDefinitions":[{"name":"app","portMappings":[{"containerPort":80,"hostPort":0}]}]});
        assert!(differences(&canonical(&described), &canonical(&bridge)).is_empty());
    }
}
