//! Role bindings (principal → workspace → roles), held compactly: they are the part of a policy
//! that grows with a deployment (NMP publishes every membership; large platforms bind 10^5 to
//! 10^6 principals), and a source keeps its parsed copy besides the compiled one. Names are
//! stored end to end in one buffer (no allocation per name), workspaces and role lists are
//! interned once per table, and a principal's bindings are a run of (workspace, role list)
//! pairs sorted by workspace.

use std::hash::BuildHasher;

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

use super::FastMap;
use super::compile::RoleId;
use super::document::{DocumentError, Entry as DocumentEntry};

type Hasher = foldhash::fast::RandomState;

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).expect("policy data is under 4 GiB (bundles are bounded to 256 MiB)")
}

/// Strings stored end to end in one buffer.
#[derive(Debug, Clone, Default)]
pub(crate) struct Names {
    text: String,
    ends: Vec<u32>,
}

impl Names {
    fn push(&mut self, name: &str) -> u32 {
        self.text.push_str(name);
        self.ends.push(to_u32(self.text.len()));
        to_u32(self.ends.len() - 1)
    }

    pub(crate) fn get(&self, id: u32) -> &str {
        let (start, end) = span(&self.ends, id as usize);
        &self.text[start as usize..end as usize]
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn iter(&self) -> impl Iterator<Item = &str> {
        (0..to_u32(self.len())).map(|id| self.get(id))
    }

    fn shrink_to_fit(&mut self) {
        self.text.shrink_to_fit();
        self.ends.shrink_to_fit();
    }

    #[cfg(test)]
    fn heap_bytes(&self) -> usize {
        self.text.capacity() + self.ends.capacity() * size_of::<u32>()
    }
}

/// Distinct names, each stored once and found by hash.
#[derive(Debug, Clone, Default)]
pub(crate) struct Interner {
    names: Names,
    index: HashTable<u32>,
    hasher: Hasher,
}

impl Interner {
    pub(crate) fn get(&self, name: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(name);
        self.index
            .find(hash, |&id| self.names.get(id) == name)
            .copied()
    }

    pub(crate) fn intern(&mut self, name: &str) -> u32 {
        let id = to_u32(self.names.len());
        match find_or_insert(&mut self.index, &self.hasher, &self.names, name, id) {
            Some(existing) => existing,
            None => self.names.push(name),
        }
    }

    pub(crate) fn name(&self, id: u32) -> &str {
        self.names.get(id)
    }

    fn shrink_to_fit(&mut self) {
        let Self {
            names,
            index,
            hasher,
        } = self;
        names.shrink_to_fit();
        index.shrink_to_fit(|&id| hasher.hash_one(names.get(id)));
    }

    #[cfg(test)]
    fn heap_bytes(&self) -> usize {
        // hashbrown: one slot and one control byte per bucket.
        self.names.heap_bytes() + self.index.capacity() * (size_of::<u32>() + 1)
    }
}

/// The id of `name` among `names`, found through `index`; or `None` when it is not there and
/// `index` has taken `new_id` for it (the caller adds the name).
fn find_or_insert(
    index: &mut HashTable<u32>,
    hasher: &Hasher,
    names: &Names,
    name: &str,
    new_id: u32,
) -> Option<u32> {
    let hash = hasher.hash_one(name);
    match index.entry(
        hash,
        |&id| names.get(id) == name,
        |&id| hasher.hash_one(names.get(id)),
    ) {
        Entry::Occupied(entry) => Some(*entry.get()),
        Entry::Vacant(entry) => {
            entry.insert(new_id);
            None
        }
    }
}

/// One principal's roles in one workspace: ids into the table's workspaces and role lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Binding {
    workspace: u32,
    roles: u32,
}

/// Principals in order, each with its bindings. The ids in a role list are role names of a
/// parsed document ([`DocumentBindings`]) or compiled role ids ([`Bindings`]).
#[derive(Debug, Clone, Default)]
struct BindingTable {
    principals: Names,
    /// Principal `i`'s bindings end at `ends[i]` and start where principal `i - 1`'s end.
    ends: Vec<u32>,
    bindings: Vec<Binding>,
    workspaces: Interner,
    role_lists: Vec<Box<[u32]>>,
    role_list_ids: FastMap<Box<[u32]>, u32>,
}

impl BindingTable {
    fn open(&mut self, principal: &str) {
        self.principals.push(principal);
    }

    fn role_list(&mut self, roles: &[u32]) -> u32 {
        if let Some(id) = self.role_list_ids.get(roles) {
            return *id;
        }
        let id = to_u32(self.role_lists.len());
        self.role_lists.push(roles.into());
        self.role_list_ids.insert(roles.into(), id);
        id
    }

    fn open_start(&self) -> usize {
        self.ends.last().map_or(0, |&end| end as usize)
    }

    /// Ends the principal opened last: its bindings sorted by workspace, and a workspace given
    /// twice keeps its last binding, as a map read from the document would.
    fn close(&mut self) {
        let start = self.open_start();
        if self.bindings.len() - start > 1 {
            let mut own = self.bindings.split_off(start);
            own.reverse();
            own.sort_by_key(|b| b.workspace);
            own.dedup_by_key(|b| b.workspace);
            self.bindings.append(&mut own);
        }
        self.ends.push(to_u32(self.bindings.len()));
    }

    fn principal_count(&self) -> usize {
        self.ends.len()
    }

    fn own(&self, principal: u32) -> &[Binding] {
        let (start, end) = span(&self.ends, principal as usize);
        &self.bindings[start as usize..end as usize]
    }

    fn roles(&self, binding: &Binding) -> &[u32] {
        &self.role_lists[binding.roles as usize]
    }

    fn roles_in(&self, principal: u32, workspace: u32) -> Option<&[u32]> {
        let own = self.own(principal);
        let at = own.binary_search_by_key(&workspace, |b| b.workspace).ok()?;
        Some(self.roles(&own[at]))
    }

    #[cfg(test)]
    fn bindings_of(&self, principal: u32) -> impl Iterator<Item = (&str, &[u32])> {
        self.own(principal)
            .iter()
            .map(|b| (self.workspaces.name(b.workspace), self.roles(b)))
    }

    /// Done adding: capacity beyond the contents and the role-list index are given back.
    fn finish(&mut self) {
        self.principals.shrink_to_fit();
        self.ends.shrink_to_fit();
        self.bindings.shrink_to_fit();
        self.workspaces.shrink_to_fit();
        self.role_lists.shrink_to_fit();
        self.role_list_ids = FastMap::default();
    }

    #[cfg(test)]
    fn heap_bytes(&self) -> usize {
        let lists: usize = self
            .role_lists
            .iter()
            .map(|l| l.len() * size_of::<u32>())
            .sum();
        self.principals.heap_bytes()
            + self.ends.capacity() * size_of::<u32>()
            + self.bindings.capacity() * size_of::<Binding>()
            + self.workspaces.heap_bytes()
            + self.role_lists.capacity() * size_of::<Box<[u32]>>()
            + lists
            // Empty once finished; its keys are copies of `role_lists`.
            + self.role_list_ids.capacity() * (size_of::<(Box<[u32]>, u32)>() + 1)
    }
}

/// `authz.principals` of one parsed document, in document order (a principal given twice is
/// kept twice; the later one wins when compiled). Role names stay names: the roles may be
/// defined by another source.
#[derive(Debug, Clone, Default)]
pub struct DocumentBindings {
    table: BindingTable,
    role_names: Interner,
    /// The roles of the workspace being read.
    pending: Vec<u32>,
}

impl DocumentBindings {
    pub(crate) fn open(&mut self, principal: &str) {
        self.table.open(principal);
    }

    pub(crate) fn workspace(&mut self, name: &str) -> u32 {
        self.table.workspaces.intern(name)
    }

    pub(crate) fn role(&mut self, name: &str) {
        let id = self.role_names.intern(name);
        self.pending.push(id);
    }

    /// Binds the roles given since the last call in `workspace` (from [`Self::workspace`]).
    pub(crate) fn bind(&mut self, workspace: u32) {
        let roles = self.table.role_list(&self.pending);
        self.pending.clear();
        self.table.bindings.push(Binding { workspace, roles });
    }

    pub(crate) fn close(&mut self) {
        self.table.close();
    }

    pub(crate) fn finish(&mut self) {
        self.table.finish();
        self.pending = Vec::new();
    }

    /// Principal entries, in document order (one given twice counts twice).
    pub fn principal_count(&self) -> usize {
        self.table.principal_count()
    }

    /// (principal, workspace) pairs.
    pub fn binding_count(&self) -> usize {
        self.table.bindings.len()
    }

    /// Whether the document has an entry for `principal` (to name the source of an error).
    pub fn defines(&self, principal: &str) -> bool {
        self.table.principals.iter().any(|p| p == principal)
    }

    /// Heap bytes held, from the capacities of what is held (the regression guard
    /// `bindings_stay_compact`).
    #[cfg(test)]
    pub(crate) fn heap_bytes(&self) -> usize {
        self.table.heap_bytes() + self.role_names.heap_bytes()
    }

    /// principal → workspace → role names, the later entry winning as in a compiled policy.
    #[cfg(test)]
    pub(crate) fn to_map(
        &self,
    ) -> std::collections::BTreeMap<String, std::collections::BTreeMap<String, Vec<String>>> {
        let mut map = std::collections::BTreeMap::new();
        for p in 0..to_u32(self.table.principal_count()) {
            let by_workspace = self
                .table
                .bindings_of(p)
                .map(|(ws, roles)| {
                    let names = roles.iter().map(|r| self.role_names.name(*r).to_string());
                    (ws.to_string(), names.collect())
                })
                .collect();
            map.insert(self.table.principals.get(p).to_string(), by_workspace);
        }
        map
    }
}

/// A binding the configuration adds to every policy (`auth.bootstrap_bindings`,
/// `auth.admin_email`), its roles resolved.
#[derive(Debug)]
pub(crate) struct AddedBinding<'a> {
    pub principal: &'a str,
    pub workspace: &'a str,
    pub roles: Vec<RoleId>,
}

/// The bindings a compiled policy decides with: principal → workspace → roles.
#[derive(Debug, Default)]
pub(crate) struct Bindings {
    table: BindingTable,
    /// Principal name → its position in `table`, while compiling.
    index: HashTable<u32>,
    /// Principal name → where its name and bindings are, for decisions: a lookup reads the
    /// slot, the name and the bindings, not the two tables of ends (a decision does several).
    slots: HashTable<Slot>,
    hasher: Hasher,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    name: (u32, u32),
    bindings: (u32, u32),
}

/// Bindings of one principal up to which a lookup compares workspace names one by one.
const SHORT_RUN: usize = 4;

/// Item `i` of a run of items stored end to end, given where each ends.
fn span(ends: &[u32], i: usize) -> (u32, u32) {
    (i.checked_sub(1).map_or(0, |before| ends[before]), ends[i])
}

impl Bindings {
    /// Merges the documents' bindings in order (a principal's entry replaces any earlier entry
    /// of that principal whole, in the same or an earlier document), resolves role names, and
    /// adds `added` to what is bound (keeping what is there). An unknown role is an error
    /// naming its place; of several, the first in principal then workspace order, as a merged
    /// document read in order would report it.
    pub(crate) fn compile(
        documents: &[&DocumentBindings],
        role_ids: &FastMap<Box<str>, RoleId>,
        added: &[AddedBinding<'_>],
    ) -> Result<Self, DocumentError> {
        let principals: usize = documents.iter().map(|d| d.principal_count()).sum();
        let mut out = Self {
            index: HashTable::with_capacity(principals + added.len()),
            ..Self::default()
        };
        let mut first_error: Option<(&str, &str, DocumentError)> = None;
        // Latest first: the first entry seen for a principal is the one that counts.
        for document in documents.iter().rev() {
            let table = &document.table;
            let lists: Vec<Result<u32, (usize, &str)>> = table
                .role_lists
                .iter()
                .map(|names| {
                    let ids = names
                        .iter()
                        .enumerate()
                        .map(|(i, &name)| {
                            let name = document.role_names.name(name);
                            role_ids.get(name).copied().ok_or((i, name))
                        })
                        .collect::<Result<Vec<RoleId>, _>>()?;
                    Ok(out.table.role_list(&ids))
                })
                .collect();
            for p in (0..to_u32(table.principal_count())).rev() {
                let principal = table.principals.get(p);
                if !out.open(principal) {
                    continue;
                }
                for binding in table.own(p) {
                    let workspace = table.workspaces.name(binding.workspace);
                    match lists[binding.roles as usize] {
                        Ok(roles) => {
                            let workspace = out.table.workspaces.intern(workspace);
                            out.table.bindings.push(Binding { workspace, roles });
                        }
                        Err((i, role)) => {
                            if first_error
                                .as_ref()
                                .is_none_or(|(p, w, _)| (principal, workspace) < (*p, *w))
                            {
                                let error = DocumentError::new(
                                    format!(
                                        "authz.principals[{principal:?}].workspaces[{workspace:?}][{i}]"
                                    ),
                                    format!("unknown role {role:?}"),
                                )
                                .in_entry(DocumentEntry::Principal(principal.to_string()));
                                first_error = Some((principal, workspace, error));
                            }
                        }
                    }
                }
                out.add(principal, added);
                out.table.close();
            }
        }
        if let Some((_, _, error)) = first_error {
            return Err(error);
        }
        for binding in added {
            if out.open(binding.principal) {
                out.add(binding.principal, added);
                out.table.close();
            }
        }
        out.table.finish();
        out.index = HashTable::new();
        out.slots = HashTable::with_capacity(out.table.principal_count());
        for p in 0..out.table.principal_count() {
            let slot = Slot {
                name: span(&out.table.principals.ends, p),
                bindings: span(&out.table.ends, p),
            };
            let hash = out.hasher.hash_one(out.table.principals.get(to_u32(p)));
            out.slots
                .insert_unique(hash, slot, |_| unreachable!("sized for every principal"));
        }
        Ok(out)
    }

    /// Opens `principal`; false when it is already there.
    fn open(&mut self, principal: &str) -> bool {
        let position = to_u32(self.table.principals.len());
        let names = &self.table.principals;
        let new =
            find_or_insert(&mut self.index, &self.hasher, names, principal, position).is_none();
        if new {
            self.table.open(principal);
        }
        new
    }

    /// Adds `added`'s bindings of `principal`, the principal opened last.
    fn add(&mut self, principal: &str, added: &[AddedBinding<'_>]) {
        let start = self.table.open_start();
        for binding in added.iter().filter(|b| b.principal == principal) {
            let workspace = self.table.workspaces.intern(binding.workspace);
            let existing = self.table.bindings[start..]
                .iter()
                .position(|b| b.workspace == workspace);
            match existing {
                Some(at) => {
                    let at = start + at;
                    let mut roles = self.table.roles(&self.table.bindings[at]).to_vec();
                    for role in &binding.roles {
                        if !roles.contains(role) {
                            roles.push(*role);
                        }
                    }
                    let roles = self.table.role_list(&roles);
                    self.table.bindings[at].roles = roles;
                }
                None => {
                    let roles = self.table.role_list(&binding.roles);
                    self.table.bindings.push(Binding { workspace, roles });
                }
            }
        }
    }

    /// `principal`'s bindings, sorted by workspace; empty when it has none.
    fn own(&self, principal: &str) -> &[Binding] {
        let text = &self.table.principals.text;
        let hash = self.hasher.hash_one(principal);
        self.slots
            .find(hash, |s| {
                &text[s.name.0 as usize..s.name.1 as usize] == principal
            })
            .map_or(&[], |s| {
                &self.table.bindings[s.bindings.0 as usize..s.bindings.1 as usize]
            })
    }

    /// Roles bound to `principal` in `workspace`.
    pub(crate) fn roles(&self, principal: &str, workspace: &str) -> &[RoleId] {
        // The principal first: most callers' ids, emails and groups are bound nowhere.
        let own = self.own(principal);
        // Most principals are bound in a few workspaces: comparing those names costs less than
        // hashing the workspace to find its id.
        if own.len() <= SHORT_RUN {
            let workspaces = &self.table.workspaces;
            return own
                .iter()
                .find(|b| workspaces.name(b.workspace) == workspace)
                .map_or(&[], |b| self.table.roles(b));
        }
        let Some(workspace) = self.table.workspaces.get(workspace) else {
            return &[];
        };
        own.binary_search_by_key(&workspace, |b| b.workspace)
            .map_or(&[], |at| self.table.roles(&own[at]))
    }

    /// `principal`'s bindings: (workspace, roles).
    pub(crate) fn of(&self, principal: &str) -> impl Iterator<Item = (&str, &[RoleId])> {
        self.own(principal)
            .iter()
            .map(|b| (self.table.workspaces.name(b.workspace), self.table.roles(b)))
    }

    /// Every principal with a binding in `workspace`, with its roles there.
    pub(crate) fn in_workspace(&self, workspace: &str) -> impl Iterator<Item = (&str, &[RoleId])> {
        let workspace = self.table.workspaces.get(workspace);
        (0..to_u32(self.table.principal_count())).filter_map(move |p| {
            let roles = self.table.roles_in(p, workspace?)?;
            Some((self.table.principals.get(p), roles))
        })
    }

    /// (principal, workspace) pairs.
    pub(crate) fn len(&self) -> usize {
        self.table.bindings.len()
    }

    #[cfg(test)]
    pub(crate) fn heap_bytes(&self) -> usize {
        self.table.heap_bytes() + self.slots.capacity() * (size_of::<Slot>() + 1)
    }
}
