//! Who and where rules apply: the identities (address ranges, MACs, groups) and the categories
//! (domain lists, and the catalogs they include), each checked and compiled into the policy's
//! tables.

use super::*;

impl Cx<'_> {
    #[allow(clippy::type_complexity)]
    pub(super) fn identities(
        &mut self,
        file: &RuleFile,
        defaults: &Defaults,
    ) -> (Vec<Identity>, HashMap<Arc<str>, IdentityId>, CidrTable, HashMap<Mac, IdentityId>) {
        let mut out: Vec<Identity> = Vec::new();
        let mut by_name: HashMap<Arc<str>, IdentityId> = HashMap::new();
        let mut nets: Vec<(IpNet, IdentityId, Range<usize>)> = Vec::new();
        let mut macs: HashMap<Mac, IdentityId> = HashMap::new();
        for def in &file.identity {
            let def = def.get_ref();
            let name = def.name.get_ref();
            if !valid_name(name) {
                self.err(span_of(&def.name), name_msg("identity name", name));
            }
            if **name == *defaults.unknown_identity {
                self.err(span_of(&def.name), format!("`{name}` is the name given to unknown sources (defaults.unknown_identity); choose another name"));
            }
            if by_name.contains_key(name.as_str()) {
                self.err(span_of(&def.name), format!("duplicate identity `{name}`"));
                continue;
            }
            if def.cidrs.is_empty() && def.macs.is_empty() {
                self.err(span_of(&def.name), format!("identity `{name}` lists no `cidrs` and no `macs`: expected at least one (feed users are matched with a rule's `groups`)"));
            }
            let id = out.len() as IdentityId;
            let mut ident =
                Identity { name: name.as_str().into(), cidrs: Vec::new(), macs: Vec::new() };
            for c in &def.cidrs {
                match parse_cidr(c.get_ref()) {
                    Ok(net) => {
                        if let Some((other, oid, _)) = nets.iter().find(|(n, _, _)| {
                            n.contains(&net.network()) || net.contains(&n.network())
                        }) {
                            let who = if *oid == id {
                                format!("`{other}` of the same identity")
                            } else {
                                format!("`{other}` of identity `{}`", out[*oid as usize].name)
                            };
                            let what = if *other == net { "duplicates" } else { "overlaps" };
                            self.err(
                                span_of(c),
                                format!("`{net}` {what} {who}: identities must not overlap"),
                            );
                        } else {
                            nets.push((net, id, span_of(c)));
                            ident.cidrs.push(net);
                        }
                    }
                    Err(msg) => self.err(span_of(c), msg),
                }
            }
            for m in &def.macs {
                match parse_mac(m.get_ref()) {
                    Some(mac) => match macs.get(&mac) {
                        Some(other) => {
                            let other = out.get(*other as usize).map_or(name.as_str(), |i| &i.name);
                            self.err(span_of(m), format!("MAC {} is already in identity `{other}`", format_mac(&mac)));
                        }
                        None => {
                            macs.insert(mac, id);
                            ident.macs.push(format_mac(&mac));
                        }
                    },
                    None => self.err(span_of(m), format!("`{}` is not a MAC address: expected six hex pairs like `02:00:5e:10:00:01`", m.get_ref())),
                }
            }
            by_name.insert(ident.name.clone(), id);
            out.push(ident);
        }
        let mut table = CidrTable::default();
        for (net, id, _) in nets {
            table.insert(net, id);
        }
        (out, by_name, table, macs)
    }

    pub(super) fn categories(
        &mut self,
        file: &RuleFile,
        loader: &dyn IncludeLoader,
    ) -> (Vec<Category>, HashMap<String, usize>, DomainIndex) {
        let mut out = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut domains = DomainIndex::default();
        let mut catalogs: HashMap<String, Result<Vec<DomainPattern>, ()>> = HashMap::new();
        if file.category.len() > MAX_CATEGORIES {
            self.err(
                span_of(&file.category[MAX_CATEGORIES]),
                format!("too many categories: at most {MAX_CATEGORIES}"),
            );
        }
        for def in file.category.iter().take(MAX_CATEGORIES) {
            let def = def.get_ref();
            let name = def.name.get_ref();
            if !valid_name(name) {
                self.err(span_of(&def.name), name_msg("category name", name));
            }
            if index.contains_key(name) {
                self.err(span_of(&def.name), format!("duplicate category `{name}`"));
                continue;
            }
            if def.include.is_empty() && def.domains.is_empty() {
                self.err(
                    span_of(&def.name),
                    format!("category `{name}` is empty: expected `domains` or `include`"),
                );
            }
            let id = out.len();
            let mut set: BTreeSet<DomainPattern> = BTreeSet::new();
            for inc in &def.include {
                let key = inc.get_ref().clone();
                if !catalogs.contains_key(&key) {
                    let loaded = self.load_catalog(inc, loader);
                    catalogs.insert(key.clone(), loaded);
                }
                if let Some(Ok(list)) = catalogs.get(&key) {
                    set.extend(list.iter().cloned());
                }
            }
            for d in &def.domains {
                match parse_pattern(d.get_ref()) {
                    Ok(p) => {
                        set.insert(p);
                    }
                    Err(msg) => self.err(span_of(d), msg),
                }
            }
            for p in &set {
                domains.insert(p, id);
            }
            index.insert(name.clone(), id);
            out.push(Category {
                name: name.as_str().into(),
                domains: set.iter().map(pattern_string).collect(),
            });
        }
        (out, index, domains)
    }

    pub(super) fn load_catalog(
        &mut self,
        inc: &Spanned<String>,
        loader: &dyn IncludeLoader,
    ) -> Result<Vec<DomainPattern>, ()> {
        let (cname, text) = match loader.load(inc.get_ref()) {
            Ok(x) => x,
            Err(msg) => {
                self.err(span_of(inc), msg);
                return Err(());
            }
        };
        let csrc = Source { name: cname.as_str().into(), text: &text };
        if text.len() > MAX_RULE_FILE {
            self.diags.push(csrc.error(0..0, "catalog is too large"));
            return Err(());
        }
        match toml::from_str::<CatalogFile>(&text) {
            Ok(cat) => {
                let mut list = Vec::with_capacity(cat.domains.len());
                let mut ok = true;
                for d in &cat.domains {
                    match parse_pattern(d.get_ref()) {
                        Ok(p) => list.push(p),
                        Err(msg) => {
                            ok = false;
                            self.diags.push(csrc.error(span_of(d), msg));
                        }
                    }
                }
                if ok { Ok(list) } else { Err(()) }
            }
            Err(e) => {
                self.diags
                    .push(csrc.error(e.span().unwrap_or(0..0), e.message().trim().to_owned()));
                Err(())
            }
        }
    }
}
