package org.medledger.hapipeer;

import ca.uhn.fhir.batch2.jobs.config.Batch2JobsConfig;
import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.jpa.api.config.JpaStorageSettings;
import ca.uhn.fhir.jpa.api.config.ThreadPoolFactoryConfig;
import ca.uhn.fhir.jpa.api.dao.IFhirSystemDao;
import ca.uhn.fhir.jpa.batch2.JpaBatch2Config;
import ca.uhn.fhir.jpa.config.HapiJpaConfig;
import ca.uhn.fhir.jpa.config.r4.JpaR4Config;
import ca.uhn.fhir.jpa.config.util.HapiEntityManagerFactoryUtil;
import ca.uhn.fhir.jpa.model.config.PartitionSettings;
import ca.uhn.fhir.jpa.model.config.SubscriptionSettings;
import ca.uhn.fhir.jpa.provider.IJpaSystemProvider;
import ca.uhn.fhir.jpa.search.DatabaseBackedPagingProvider;
import ca.uhn.fhir.jpa.subscription.channel.config.SubscriptionChannelConfig;
import ca.uhn.fhir.narrative2.NullNarrativeGenerator;
import ca.uhn.fhir.parser.StrictErrorHandler;
import ca.uhn.fhir.rest.server.RestfulServer;
import ca.uhn.fhir.rest.server.provider.ResourceProviderFactory;
import jakarta.persistence.EntityManagerFactory;
import java.util.Map;
import javax.sql.DataSource;
import org.springframework.beans.factory.config.ConfigurableListableBeanFactory;
import org.springframework.boot.SpringApplication;
import org.springframework.boot.autoconfigure.SpringBootApplication;
import org.springframework.boot.autoconfigure.orm.jpa.HibernateJpaAutoConfiguration;
import org.springframework.boot.web.servlet.ServletRegistrationBean;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Import;
import org.springframework.context.annotation.Primary;
import org.springframework.orm.jpa.JpaTransactionManager;
import org.springframework.orm.jpa.LocalContainerEntityManagerFactoryBean;

/**
 * HAPI FHIR's JPA server, R4, as `medledger bench hapi` runs it next to medledger's ingestion:
 * the plain JPA storage of the reference open-source FHIR server, nothing else (no
 * subscriptions, no full-text index, no narrative generation, no web tester).
 *
 * <p>Validation is set to what medledger's ingestion checks (see docs/benchmarks.md): the
 * parser is strict (an unknown element, a value of the wrong JSON type or format, a repeated
 * element that may not repeat, a missing required element: the request is refused), and
 * referential integrity is enforced on write (a reference to a resource that is neither in the
 * transaction nor stored is refused). No profile or terminology validation: medledger does
 * none either.
 */
@SpringBootApplication(exclude = HibernateJpaAutoConfiguration.class)
@Import({
	JpaR4Config.class,
	HapiJpaConfig.class,
	ThreadPoolFactoryConfig.class,
	SubscriptionChannelConfig.class, // in-memory queues, for batch2 work notifications
	JpaBatch2Config.class,
	Batch2JobsConfig.class
})
public class HapiPeer {

	public static void main(String[] args) {
		SpringApplication.run(HapiPeer.class, args);
	}

	@Bean
	public JpaStorageSettings storageSettings() {
		JpaStorageSettings settings = new JpaStorageSettings();
		settings.setEnforceReferentialIntegrityOnWrite(true);
		settings.setAllowExternalReferences(false);
		settings.setAutoCreatePlaceholderReferenceTargets(false);
		// The documents are stored as Bundle resources (POST /Bundle), as a HAPI user keeps them.
		settings.setBundleTypesAllowedForStorage(
				java.util.Set.of("collection", "document", "message", "searchset", "batch-response",
						"transaction-response", "history"));
		return settings;
	}

	@Bean
	public PartitionSettings partitionSettings() {
		return new PartitionSettings();
	}

	@Bean
	public SubscriptionSettings subscriptionSettings() {
		return new SubscriptionSettings();
	}

	@Primary
	@Bean
	public LocalContainerEntityManagerFactoryBean entityManagerFactory(
			ConfigurableListableBeanFactory beanFactory,
			FhirContext fhirContext,
			JpaStorageSettings storageSettings,
			DataSource dataSource) {
		LocalContainerEntityManagerFactoryBean factory =
				HapiEntityManagerFactoryUtil.newEntityManagerFactory(beanFactory, fhirContext, storageSettings);
		factory.setPersistenceUnitName("HAPI_PU");
		factory.setDataSource(dataSource);
		factory.setJpaPropertyMap(Map.of(
				"hibernate.dialect", "ca.uhn.fhir.jpa.model.dialect.HapiFhirPostgresDialect",
				"hibernate.hbm2ddl.auto", "update",
				"hibernate.jdbc.batch_size", "20",
				"hibernate.cache.use_query_cache", "false",
				"hibernate.cache.use_second_level_cache", "false",
				"hibernate.search.enabled", "false",
				"hibernate.format_sql", "false",
				"hibernate.show_sql", "false"));
		return factory;
	}

	@Primary
	@Bean
	public JpaTransactionManager transactionManager(EntityManagerFactory entityManagerFactory) {
		return new JpaTransactionManager(entityManagerFactory);
	}

	@Bean
	public RestfulServer restfulServer(
			IFhirSystemDao<?, ?> systemDao,
			ResourceProviderFactory resourceProviders,
			IJpaSystemProvider systemProvider,
			DatabaseBackedPagingProvider pagingProvider) {
		FhirContext context = systemDao.getContext();
		context.setParserErrorHandler(new StrictErrorHandler());
		context.setNarrativeGenerator(new NullNarrativeGenerator());
		RestfulServer server = new RestfulServer(context);
		server.registerProviders(resourceProviders.createProviders());
		server.registerProvider(systemProvider);
		server.setPagingProvider(pagingProvider);
		return server;
	}

	@Bean
	public ServletRegistrationBean<RestfulServer> fhirServlet(RestfulServer server) {
		ServletRegistrationBean<RestfulServer> registration = new ServletRegistrationBean<>(server, "/fhir/*");
		registration.setLoadOnStartup(1);
		return registration;
	}
}
