//! The texts of service events, word for word as ECS writes them: tools and people match
//! them. Task ids are the 32-hex ids, deployments their `ecs-svc/…` ids.

fn tasks(ids: &[String]) -> String {
    ids.iter().map(|id| format!("(task {id})")).collect::<Vec<_>>().join(" ")
}

pub fn started(service: &str, ids: &[String]) -> String {
    format!("(service {service}) has started {} tasks: {}.", ids.len(), tasks(ids))
}

/// Started tasks, `replaced` of which replace tasks that failed their health checks.
pub fn started_replacing(service: &str, ids: &[String], replaced: usize) -> String {
    format!("{} Amazon ECS replaced {replaced} tasks due to an unhealthy status.", started(service, ids))
}

pub fn stopped(service: &str, ids: &[String]) -> String {
    format!("(service {service}) has stopped {} running tasks: {}.", ids.len(), tasks(ids))
}

pub fn unhealthy(service: &str, id: &str) -> String {
    format!("(service {service}) (task {id}) failed container health checks.")
}

pub fn steady(service: &str) -> String {
    format!("(service {service}) has reached a steady state.")
}

pub fn deployment_completed(service: &str, deployment: &str) -> String {
    format!("(service {service}) (deployment {deployment}) deployment completed.")
}

pub fn deployment_failed(service: &str, deployment: &str) -> String {
    format!("(service {service}) (deployment {deployment}) deployment failed: tasks failed to start.")
}

pub fn rolling_back(service: &str, deployment: &str) -> String {
    format!("(service {service}) rolling back to deployment {deployment}.")
}

pub fn throttled(service: &str) -> String {
    format!("(service {service}) is unable to consistently start tasks successfully.")
}

/// Scale-in or a deployment waits for `n` protected tasks.
pub fn protected(service: &str, n: usize) -> String {
    format!("(service {service}) was unable to scale in due to (reason: {n} tasks under protection).")
}

pub fn stalled(service: &str) -> String {
    format!(
        "(service {service}) was unable to stop or start tasks during a deployment because of the service deployment configuration. Update the minimumHealthyPercent or maximumPercent value and try again."
    )
}

/// Why the one container instance (this host) cannot take a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unplaced {
    Memory,
    Cpu,
    Ports,
    Agent,
    /// `distinctInstance`: it already runs a task of the service.
    Distinct,
}

pub fn unplaced(service: &str, instance: &str, why: Unplaced) -> String {
    let closest = match why {
        Unplaced::Memory => "has insufficient memory available".to_owned(),
        Unplaced::Cpu => "has insufficient CPU units available".to_owned(),
        Unplaced::Ports => "is already using a port required by your task".to_owned(),
        Unplaced::Agent => "encountered error \"AGENT\"".to_owned(),
        Unplaced::Distinct => {
            "is already running a task of this service, which its distinctInstance placement constraint forbids"
                .to_owned()
        }
    };
    format!(
        "(service {service}) was unable to place a task because no container instance met all of its requirements. The closest matching (container-instance {instance}) {closest}. For more information, see the Troubleshooting section of the Amazon ECS Developer Guide."
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_ecs_texts() {
        let ids = vec!["a1".to_owned(), "b2".to_owned()];
        assert_eq!(started("web", &ids), "(service web) has started 2 tasks: (task a1) (task b2).");
        assert_eq!(
            started_replacing("web", &ids[..1], 1),
            "(service web) has started 1 tasks: (task a1). Amazon ECS replaced 1 tasks due to an unhealthy status."
        );
        assert_eq!(stopped("web", &ids), "(service web) has stopped 2 running tasks: (task a1) (task b2).");
        assert_eq!(
            unplaced("web", "abc", Unplaced::Ports),
            "(service web) was unable to place a task because no container instance met all of its requirements. The closest matching (container-instance abc) is already using a port required by your task. For more information, see the Troubleshooting section of the Amazon ECS Developer Guide."
        );
    }
}
