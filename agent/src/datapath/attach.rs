//! Attaching the classifiers to an underlay interface (TCX on kernels 6.6 and later,
//! a clsact qdisc through netlink before), and detaching them.

use aya::programs::tc::{self, SchedClassifierLinkId, TcAttachType};

use super::links::Interface;
use super::*;

/// One attached interface.
pub(super) struct Attachment {
    interface: String,
    ingress: (&'static str, SchedClassifierLinkId),
    egress: (&'static str, SchedClassifierLinkId),
}

impl Datapath {
    /// Attaches the ingress and egress classifiers to an interface (idempotent).
    pub fn attach(&mut self, interface: &Interface) -> Result<(), LoaderError> {
        if self
            .attachments
            .iter()
            .any(|a| a.interface == interface.name)
        {
            return Ok(());
        }
        let (ingress_name, egress_name) = if interface.ethernet {
            (programs::INGRESS, programs::EGRESS)
        } else {
            (programs::INGRESS_L3, programs::EGRESS_L3)
        };
        let ingress = self.attach_one(&interface.name, ingress_name, TcAttachType::Ingress)?;
        let egress = match self.attach_one(&interface.name, egress_name, TcAttachType::Egress) {
            Ok(link) => link,
            Err(err) => {
                let _ = program_mut(&mut self.ebpf, ingress_name).and_then(|p| {
                    p.detach(ingress).map_err(|e| LoaderError::Program {
                        op: "detaching",
                        program: ingress_name,
                        source: Box::new(e),
                    })
                });
                return Err(err);
            }
        };
        tracing::info!(interface = %interface.name, ethernet = interface.ethernet, "datapath attached");
        self.attachments.push(Attachment {
            interface: interface.name.clone(),
            ingress: (ingress_name, ingress),
            egress: (egress_name, egress),
        });
        Ok(())
    }

    fn attach_one(
        &mut self,
        interface: &str,
        name: &'static str,
        direction: TcAttachType,
    ) -> Result<SchedClassifierLinkId, LoaderError> {
        let direction_name = match direction {
            TcAttachType::Ingress => "ingress",
            _ => "egress",
        };
        let program = program_mut(&mut self.ebpf, name)?;
        match program.attach(interface, direction) {
            Ok(link) => Ok(link),
            Err(first) => {
                // Kernels before 6.6 attach through netlink and need a clsact qdisc.
                if aya::util::KernelVersion::current()
                    .is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0))
                {
                    return Err(LoaderError::Attach {
                        interface: interface.into(),
                        direction: direction_name,
                        source: Box::new(first),
                    });
                }
                let _ = tc::qdisc_add_clsact(interface);
                program
                    .attach(interface, direction)
                    .map_err(|e| LoaderError::Attach {
                        interface: interface.into(),
                        direction: direction_name,
                        source: Box::new(e),
                    })
            }
        }
    }

    /// Detaches the classifiers from an interface (no-op if not attached).
    pub fn detach(&mut self, interface: &str) {
        let Some(at) = self
            .attachments
            .iter()
            .position(|a| a.interface == interface)
        else {
            return;
        };
        let attachment = self.attachments.remove(at);
        for (name, link) in [attachment.ingress, attachment.egress] {
            if let Ok(program) = program_mut(&mut self.ebpf, name) {
                if let Err(err) = program.detach(link) {
                    // The interface may already be gone, taking the link with it.
                    tracing::debug!(interface, "detaching {name}: {err}");
                }
            }
        }
        tracing::info!(interface, "datapath detached");
    }

    /// Interfaces the classifiers are attached to.
    pub fn attached(&self) -> Vec<String> {
        self.attachments
            .iter()
            .map(|a| a.interface.clone())
            .collect()
    }
}
